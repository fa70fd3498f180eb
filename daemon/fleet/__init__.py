"""One account, many rooms: the account's limits shared fairly over the broker
(account.py: the room's side; share.py: the allocation; pacer.py: pacing to a share;
record.py: what each room publishes) and the fleet view (view.py)."""
