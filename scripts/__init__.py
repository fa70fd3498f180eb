"""The project's scripts, each run as `.venv/bin/python scripts/NAME.py`, and the test bench
that they and `tests/` import as `scripts.NAME` (the venv's editable install puts the
project root on `sys.path`):

- `audio_rig`: the private PulseAudio rig (virtual microphone and speaker);
- `room_echo`: the room model (impulse responses, the speaker's echo into the microphone);
- `echo_rooms`, `echo_matrix`: the composed rooms of `bench_echo.py --matrix`, and their
  closed loop;
- `scenario`: scenarios composed from the shared recordings, and the segmenter run on them;
- `segscore`, `legacy_vad`: segmentation scoring against RTTM, and its baseline judge;
- `broker`, `simproc`, `procs`: Mosquitto, the service simulator and the daemon as child
  processes, stopped by PID;
- `e2e_harness`, `tones`: the real daemon on the rig with a broker and the simulator, and
  the tones its speaker played;
- `soak_memory`: the soak's memory diagnosis;
- `fleet_rooms`: the rooms of `bench_fleet.py` (and, run as a script, one real daemon of it).
"""
