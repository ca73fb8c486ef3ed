-- The presence of one room: which connections, on every instance, are in it and for
-- whom. Instances refresh their entries with heartbeats; an entry not refreshed within
-- its lifetime (its instance died without saying goodbye) is swept by a later call on
-- the room, whoever makes it. Every key carries the room as its hash tag.
--
-- No call does work that grows with the room: a sweep takes at most ARGV[4] expired
-- entries (the caller sweeps again while more are left), `list` reads only the users
-- it lists (by name, from a sorted set) and counts them from a hash's length.
--
-- KEYS[1] members  chat:{room}:presence        hash: connection -> member JSON {sub, name}
-- KEYS[2] expiry   chat:{room}:presence:exp    sorted set: connection -> expiry, ms
-- KEYS[3] users    chat:{room}:presence:users  hash: sub -> how many connections
-- KEYS[4] live     chat:{room}:live            the room's pub/sub channel (not a key,
--                                              named so that it is routed with the slot)
-- KEYS[5] names    chat:{room}:presence:names  sorted set, all scores 0: name \0 sub of
--                                              each user, so in order of name
-- ARGV[1] the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[2] an entry's lifetime in milliseconds
-- ARGV[3] the operation:
--         enter  ARGV[5..]: connection, member pairs to add, or to keep alive
--         leave  ARGV[5..]: connections to remove
--         sweep  nothing more than the sweep
--         list   nothing to change
-- ARGV[4] how many expired entries to sweep at most, and for list, users to list
-- Returns for list {users in the room, member JSON of the first ARGV[4] by name...};
-- else {1 if expired entries are left to sweep, else 0}.
-- A user's first connection in the room publishes {"e":"join",sub,name,o}, its last one
-- {"e":"leave",sub,name,o}: each user counts once however many tabs it has.

local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lifetime = tonumber(ARGV[2])
local slice = tonumber(ARGV[4])

-- `o`, the connection the event is about, keeps a joining connection from hearing of
-- itself after the member list it was just sent.
local function announce(kind, conn, m)
  redis.call(ARGV[1], KEYS[4], cjson.encode({e = kind, sub = m.sub, name = m.name, o = conn}))
end

local function remove(conn)
  redis.call('ZREM', KEYS[2], conn)
  local member = redis.call('HGET', KEYS[1], conn)
  if not member then
    return
  end
  redis.call('HDEL', KEYS[1], conn)
  local m = cjson.decode(member)
  if redis.call('HINCRBY', KEYS[3], m.sub, -1) <= 0 then
    redis.call('HDEL', KEYS[3], m.sub)
    redis.call('ZREM', KEYS[5], m.name .. '\0' .. m.sub)
    announce('leave', conn, m)
  end
end

local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, slice + 1)
for i = 1, math.min(#expired, slice) do
  remove(expired[i])
end
local more = 0
if #expired > slice then
  more = 1
end

local op = ARGV[3]
if op == 'enter' then
  for i = 5, #ARGV - 1, 2 do
    local conn, member = ARGV[i], ARGV[i + 1]
    if redis.call('HSETNX', KEYS[1], conn, member) == 1 then
      local m = cjson.decode(member)
      if redis.call('HINCRBY', KEYS[3], m.sub, 1) == 1 then
        redis.call('ZADD', KEYS[5], 0, m.name .. '\0' .. m.sub)
        announce('join', conn, m)
      end
    end
    redis.call('ZADD', KEYS[2], now + lifetime, conn)
  end
elseif op == 'leave' then
  for i = 5, #ARGV do
    remove(ARGV[i])
  end
end

-- The keys outlive their newest entry, so a room every instance left silently goes.
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[3], KEYS[5]}) do
  redis.call('PEXPIRE', key, 2 * lifetime)
end
if op ~= 'list' then
  return {more}
end

-- The first users by name. A name whose user is gone (left through a server that did
-- not keep this index) is dropped on the way; at most a few pages are read for that.
local listed = {redis.call('HLEN', KEYS[3])}
local stale = {}
local start = 0
for _ = 1, 4 do
  local page = redis.call('ZRANGE', KEYS[5], start, start + slice - 1)
  for _, entry in ipairs(page) do
    local name, sub = string.match(entry, '^(.-)%z(.*)$')
    if redis.call('HEXISTS', KEYS[3], sub) == 1 then
      if #listed <= slice then
        table.insert(listed, cjson.encode({sub = sub, name = name}))
      end
    else
      table.insert(stale, entry)
    end
  end
  start = start + #page
  if #page < slice or #listed > slice then
    break
  end
end
for _, entry in ipairs(stale) do
  redis.call('ZREM', KEYS[5], entry)
end
return listed
