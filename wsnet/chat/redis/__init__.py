"""The Redis backplane: rooms spanning every node and worker on one Redis.

``resp`` is the wire format (pure), ``link`` one reconnecting connection on the
server's loop (through ``Server.open_stream``, no socket code of its own), and
``backplane`` the ``RedisBackplane`` itself. Importing this package needs no
hiredis; starting a backplane does.
"""

from wsnet.chat.redis.backplane import RedisBackplane
from wsnet.chat.redis.resp import RedisAddress, RedisError, redis_available

__all__ = ["RedisAddress", "RedisBackplane", "RedisError", "redis_available"]
