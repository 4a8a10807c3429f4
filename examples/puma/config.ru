# A Rack app for Puma as command workers: each worker is one Puma (single mode) on its own listener (fd 3).
# Run (Debian packages puma and ruby-rack; `make setup` installs them):
#   port-sharding serve --host 127.0.0.1 --port 9292 -w 2 -- \
#     sh -c 'exec puma -C examples/puma/puma.rb -b tcp://127.0.0.1:$PORT_SHARDING_PORT examples/puma/config.ru'
# Puma adopts the inherited socket only when -b names its exact address; `exec` keeps the pid in LISTEN_PID.
# Puma 5 sends no READY=1: the supervisor counts a worker ready after --ready-delay (1 s) alive.
# SLOW_EVERY=N makes every Nth request of a process sleep SLOW_MS milliseconds first (make bench-apps' mixed workload).
slow_every = ENV.fetch("SLOW_EVERY", "0").to_i
slow_s = ENV.fetch("SLOW_MS", "200").to_i / 1000.0
count = 0
lock = Mutex.new
server = defined?(Unicorn) ? "unicorn" : "puma" # examples/unicorn runs this app too
run lambda { |_env|
  sleep(slow_s) if slow_every.positive? && lock.synchronize { (count += 1) % slow_every }.zero?
  body = "Hello from #{server} process #{Process.pid}\n"
  [200, { "content-type" => "text/plain", "content-length" => body.bytesize.to_s }, [body]]
}
