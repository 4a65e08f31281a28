-- Record a worker as seen now (Redis time). KEYS: workers zset, names hash. ARGV: id, name.
redis.call('ZADD', KEYS[1], now_ms(), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
