-- What a joining client's recovery is judged against, read atomically: Redis's clock,
-- the room's epoch and its newest entry's id. One script rather than a MULTI: on a
-- Redis Cluster a transaction whose slot moved answers EXECABORT with the MOVED or ASK
-- inside, which the client library does not follow, while a script is one command it
-- redirects like any other.
--
-- KEYS[1] stream  chat:{room}:log
-- KEYS[2] meta    chat:{room}:meta
-- Returns {seconds, microseconds, epoch or nil, newest id or ''}

local now = redis.call('TIME')
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {now[1], now[2], redis.call('HGET', KEYS[2], 'epoch'), top[1] and top[1][1] or ''}
