-- Deletes one message of a room: the entry stays where it is (so the `prev` links every
-- reader and every recovery follows stay whole), its id joins the room's set of
-- deleted messages (which reads consult, see range.lua), and a tombstone entry
-- `deletes = <id>` is appended and published like a message, so that every instance
-- tells its clients at once and a replay from before it tells them too.
-- Every key carries the room as its hash tag.
--
-- KEYS[1] stream   chat:{room}:log
-- KEYS[2] meta     chat:{room}:meta
-- KEYS[3] live     chat:{room}:live     (the pub/sub channel, routed with the slot)
-- KEYS[4] deleted  chat:{room}:deleted  (a set of message ids)
-- ARGV[1] the id of the message to delete
-- ARGV[2] history length (exact MAXLEN, as the append script)
-- ARGV[3] seconds an idle room lives (the stream's and meta's TTL, as the append script)
-- ARGV[4] seconds the deleted set is kept: as long as the message may still be stored
-- ARGV[5] the publish command: PUBLISH, or SPUBLISH on a cluster
-- Returns {'deleted', tombstone id}, {'already', ''} (deleted before: nothing written),
-- or {'not_found', ''} (no message with that id: never, trimmed, or not a message).

local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])[1]
local is_message = false
if entry then
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'text' then
      is_message = true
    end
  end
end
if not is_message then
  return {'not_found', ''}
end
if redis.call('SISMEMBER', KEYS[4], ARGV[1]) == 1 then
  return {'already', ''}
end

-- The message exists, so the stream has a newest entry to link the tombstone to.
local prev = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1][1]
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'prev', prev, 'deletes', ARGV[1])
-- `last` is what the append script checks the stream against to notice lost history.
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'last', id)
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[4])

-- As an appended message is published: [id, prev, name, text, sub, from, deletes].
redis.call(ARGV[5], KEYS[3], cjson.encode({id, prev, '', '', '', '', ARGV[1]}))
return {'deleted', id}
