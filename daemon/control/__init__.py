"""Remote configuration of the room over MQTT (the control plane).

layers.py         file < fleet < site < room, validated as a whole by RoomSettings
state.py          the room layer on disk (atomic writes, a bad file set aside)
homeassistant.py  the Home Assistant device discovery document
plane.py          topics, handling, rate limit, answers; wired to MqttLink
"""

from daemon.control.plane import ControlPlane, Topics

__all__ = ["ControlPlane", "Topics"]
