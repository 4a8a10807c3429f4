# A Rack app for Puma as command workers: each worker is one Puma (single mode) on its own listener (fd 3).
# Run (Debian packages puma and ruby-rack; `make setup` installs them):
#   port-sharding serve --host 127.0.0.1 --port 9292 -w 2 -- \
#     sh -c 'exec puma -C examples/puma/puma.rb -b tcp://127.0.0.1:$PORT_SHARDING_PORT examples/puma/config.ru'
# Puma adopts the inherited socket only when -b names its exact address; `exec` keeps the pid in LISTEN_PID.
# Puma 5 sends no READY=1: the supervisor counts a worker ready after --ready-delay (1 s) alive.
run ->(env) { [200, { "content-type" => "text/plain" }, ["Hello from puma process #{Process.pid}\n"]] }
