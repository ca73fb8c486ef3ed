-- Appends one chat message to a room, atomically with everything that must agree with it.
-- Every key carries the room as its hash tag, so the script touches one cluster slot.
--
-- KEYS[1] stream  chat:{room}:log
-- KEYS[2] meta    chat:{room}:meta   (epoch, last)
-- KEYS[3] live    chat:{room}:live   (the pub/sub channel of new entries; not a key, named
--                 here so that it is routed with the room's slot)
-- KEYS[4] (optional) idempotency key chat:{room}:cid:<cid>, holding the id it was stored as
-- ARGV[1] a fresh random epoch, used only if the room has none (its history was lost
--         or never existed)
-- ARGV[2] history length (exact MAXLEN)
-- ARGV[3] history age in milliseconds: older entries are trimmed (MINID)
-- ARGV[4] seconds an idle room lives: both keys expire that long after the last write
-- ARGV[5] name
-- ARGV[6] text
-- ARGV[7] seconds an idempotency key is kept
-- ARGV[8] the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[9] the author's sub when signed in (or the server API caller's), else empty
-- ARGV[10] where the message comes from: 'api' for the server API, else empty
-- Returns {id, epoch, duplicate}: duplicate is 1 when KEYS[4] named a message already
-- stored, whose id is returned and nothing is written.

if KEYS[4] then
  local stored = redis.call('GET', KEYS[4])
  if stored then
    return {stored, redis.call('HGET', KEYS[2], 'epoch') or '', 1}
  end
end

-- `prev` links each entry to the one before it, so any reader can tell whether it saw
-- every entry: an entry whose prev is not the id it delivered last means a gap.
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local prev = top[1] and top[1][1] or '0-0'

-- The meta hash remembers the newest id, which trimming never removes: a stream without
-- it lost entries (it expired or was evicted on its own), so its history starts a new
-- epoch.
local last = redis.call('HGET', KEYS[2], 'last')
if last and redis.call('XRANGE', KEYS[1], last, last)[1] == nil then
  redis.call('DEL', KEYS[2])
end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')

local fields = {'name', ARGV[5], 'text', ARGV[6], 'prev', prev}
if ARGV[9] ~= '' then
  table.insert(fields, 'sub')
  table.insert(fields, ARGV[9])
end
if ARGV[10] ~= '' then
  table.insert(fields, 'from')
  table.insert(fields, ARGV[10])
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', unpack(fields))
redis.call('HSET', KEYS[2], 'last', id)

-- Stream ids are Redis's clock, so the age limit is a MINID; the entry just added is
-- always younger than that.
local now = redis.call('TIME')
local oldest_kept = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', oldest_kept))

-- Keys without a TTL are never evicted under volatile-lru (ElastiCache's default);
-- refreshed on every write, so only idle rooms go.
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
if KEYS[4] then
  redis.call('SET', KEYS[4], id, 'EX', ARGV[7])
end

-- Live delivery: only the instances following this room receive it, so the cost per
-- message does not grow with the number of rooms. `prev` lets a receiver see that it
-- missed one (and read it from the stream).
redis.call(ARGV[8], KEYS[3], cjson.encode({id, prev, ARGV[5], ARGV[6], ARGV[9], ARGV[10]}))
return {id, epoch, 0}
