-- A range of a room's stream, with which of its messages were deleted and the room's
-- epoch, read atomically: what a replay or a page of history sends.
-- Every key carries the room as its hash tag.
--
-- KEYS[1] stream   chat:{room}:log
-- KEYS[2] deleted  chat:{room}:deleted  (a set of message ids, see delete.lua)
-- KEYS[3] meta     chat:{room}:meta
-- ARGV[1] XRANGE (oldest first) or XREVRANGE (newest first)
-- ARGV[2], ARGV[3] the range's two ends, as the command takes them
-- ARGV[4] how many entries at most
-- Returns {entries, ids of the deleted messages among them, epoch or nil}.

local entries = redis.call(ARGV[1], KEYS[1], ARGV[2], ARGV[3], 'COUNT', ARGV[4])
local deleted = {}
if redis.call('EXISTS', KEYS[2]) == 1 then
  for _, entry in ipairs(entries) do
    if redis.call('SISMEMBER', KEYS[2], entry[1]) == 1 then
      table.insert(deleted, entry[1])
    end
  end
end
return {entries, deleted, redis.call('HGET', KEYS[3], 'epoch')}
