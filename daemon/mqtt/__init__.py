"""MQTT: the daemon's link to the broker (link.py), what waits to be sent (outbox.py),
the room's device claim (claims.py) and the client parts `check` shares (client.py)."""

from daemon.mqtt.client import broker_client, check_topic_level, encode_json
from daemon.mqtt.link import MessageHandler, MqttLink

__all__ = ["MessageHandler", "MqttLink", "broker_client", "check_topic_level", "encode_json"]
