-- The presence of one room: which connections, on every instance, are in it and for
-- whom. Instances refresh their entries with heartbeats; an entry not refreshed within
-- its lifetime (its instance died without saying goodbye) is swept by the next call
-- on the room, whoever makes it. Every key carries the room as its hash tag.
--
-- KEYS[1] members  chat:{room}:presence        hash: connection -> member JSON {sub, name}
-- KEYS[2] expiry   chat:{room}:presence:exp    sorted set: connection -> expiry, ms
-- KEYS[3] users    chat:{room}:presence:users  hash: sub -> how many connections
-- KEYS[4] live     chat:{room}:live            the room's pub/sub channel (not a key,
--                                              named so that it is routed with the slot)
-- ARGV[1] the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[2] an entry's lifetime in milliseconds
-- ARGV[3] the operation:
--         enter  ARGV[4..]: connection, member pairs to add, or to keep alive
--         leave  ARGV[4..]: connections to remove
--         list   nothing to change
-- Returns the members' JSON (one per connection) for list, else an empty array.
-- A user's first connection in the room publishes {"e":"join",sub,name,o}, its last one
-- {"e":"leave",sub,name,o}: each user counts once however many tabs it has.

local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lifetime = tonumber(ARGV[2])

-- `o`, the connection the event is about, keeps a joining connection from hearing of
-- itself after the member list it was just sent.
local function announce(kind, conn, member)
  local m = cjson.decode(member)
  redis.call(ARGV[1], KEYS[4], cjson.encode({e = kind, sub = m.sub, name = m.name, o = conn}))
end

local function remove(conn)
  redis.call('ZREM', KEYS[2], conn)
  local member = redis.call('HGET', KEYS[1], conn)
  if not member then
    return
  end
  redis.call('HDEL', KEYS[1], conn)
  local sub = cjson.decode(member).sub
  if redis.call('HINCRBY', KEYS[3], sub, -1) <= 0 then
    redis.call('HDEL', KEYS[3], sub)
    announce('leave', conn, member)
  end
end

for _, conn in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  remove(conn)
end

local op = ARGV[3]
if op == 'enter' then
  for i = 4, #ARGV - 1, 2 do
    local conn, member = ARGV[i], ARGV[i + 1]
    if redis.call('HSETNX', KEYS[1], conn, member) == 1 then
      if redis.call('HINCRBY', KEYS[3], cjson.decode(member).sub, 1) == 1 then
        announce('join', conn, member)
      end
    end
    redis.call('ZADD', KEYS[2], now + lifetime, conn)
  end
elseif op == 'leave' then
  for i = 4, #ARGV do
    remove(ARGV[i])
  end
end

-- The keys outlive their newest entry, so a room every instance left silently goes.
for i = 1, 3 do
  redis.call('PEXPIRE', KEYS[i], 2 * lifetime)
end
if op == 'list' then
  return redis.call('HVALS', KEYS[1])
end
return {}
