"""The Lua scripts behind the job store: each step that must not be seen half done runs in one script.

Redis runs a script atomically, so a chunk's start, its claims, its publication, a job's finish, a
rebuilt done-index's swap and the takeover of a dead worker's chunk are each all-or-nothing, however
many workers race. The keys they touch are described in `captioner.service.store`.
"""

# A chunk starts. -1: no such job; -2: the chunk is finished already (a redelivery); -3: another
# live worker is running it now (a duplicate delivery: it must wait, not count the chunk); else
# how often it was started. A chunk waiting for its retry (`retry_at`) is anyone's to take. The
# first start of the job sets started_at. ARGV[5]: this worker's id.
START = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -2 end
local held = redis.call('HGET', KEYS[4], ARGV[3])
if held and not string.find(held, '"retry_at"', 1, true) then
  local worker = string.match(held, '^{"worker": "([^"]*)"')
  if worker and worker ~= ARGV[5] and redis.call('EXISTS', 'captioner:alive:' .. worker) == 1 then return -3 end
end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
if redis.call('HGET', KEYS[1], 'state') == 'queued' then redis.call('HSET', KEYS[1], 'state', 'running') end
redis.call('HSET', KEYS[4], ARGV[3], ARGV[4])
return redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
"""

# Claim videos for captioning. Per video: 0 claimed by me, 1 done already, 2 claimed by another
# chunk (of this or another job) that a live worker is running now. A claim whose worker stopped
# beating, or whose chunk that worker no longer runs (its running entry is gone or another
# worker's), is taken over. KEYS: done, claims, running. ARGV[1]: "WORKER|JOB:CHUNK", the claimant.
CLAIM = """
local out = {}
for i = 2, #ARGV do
  local v = ARGV[i]
  if redis.call('SISMEMBER', KEYS[1], v) == 1 then
    out[#out + 1] = 1
  else
    local owner = redis.call('HGET', KEYS[2], v)
    local live = false
    if owner and owner ~= ARGV[1] then
      local worker, chunk = string.match(owner, '^([^|]+)|(.+)$')
      if worker and redis.call('EXISTS', 'captioner:alive:' .. worker) == 1 then
        local entry = redis.call('HGET', KEYS[3], chunk)
        live = entry ~= false and string.find(entry, '{"worker": "' .. worker .. '"', 1, true) == 1
      end
    end
    if live then
      out[#out + 1] = 2
    else
      redis.call('HSET', KEYS[2], v, ARGV[1])
      out[#out + 1] = 0
    end
  end
end
return out
"""

# A chunk's records are visible (its part file is published): mark its ok videos done and release
# its claims; then, the first time the chunk finishes only, count its videos and finish the chunk.
# Returns 1 when every chunk of the job is finished and the job still needs finishing.
# KEYS: job, chunks, workers, running, done, claims, rebuilding flag, rebuilding set.
# ARGV: chunk, worker host, busy_s, running field, ok, failed, skipped, output/prompt/cached tokens,
#       number of ok videos N, the N ok videos, then the chunk's other videos.
PUBLISH = """
local rebuilding = redis.call('EXISTS', KEYS[7]) == 1
local n = tonumber(ARGV[11])
for i = 12, #ARGV do
  local v = ARGV[i]
  if i < 12 + n then
    redis.call('SADD', KEYS[5], v)
    if rebuilding then redis.call('SADD', KEYS[8], v) end
  end
  redis.call('HDEL', KEYS[6], v)
end
redis.call('HDEL', KEYS[4], ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local names = {'ok', 'failed', 'skipped', 'output_tokens', 'prompt_tokens', 'cached_tokens'}
for i = 1, 6 do redis.call('HINCRBY', KEYS[1], names[i], ARGV[4 + i]) end
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'busy_s', ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state')
local total = tonumber(redis.call('HGET', KEYS[1], 'chunks') or '0')
if redis.call('SCARD', KEYS[2]) >= total and state ~= 'done' and state ~= 'cancelled' and state ~= 'failed' then
  return 1
end
return 0
"""

# queued/running -> a finished state, once; the job leaves the set of unfinished jobs (ARGV[5], ARGV[6]).
FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('SREM', ARGV[5], ARGV[6])
if not state then return -1 end
if state == 'done' or state == 'cancelled' or state == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'finished_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[3]) end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

# A rebuilt done-index replaces the old one, with what publishers added meanwhile.
# KEYS: done, new, sig, rebuilding flag; ARGV: signature.
SWAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[1]) else redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4])
return 1
"""

# Take over a running chunk, exactly once (1), else 0: its worker stopped beating, or (ARGV[4] == '1')
# the caller is that worker and knows it no longer runs the chunk.
TAKEOVER = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[4] ~= '1' and redis.call('EXISTS', 'captioner:alive:' .. ARGV[3]) == 1 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# A chunk waits for its retry: its running entry (if still this worker's, ARGV[2]) becomes ARGV[3].
DEFER = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
