# unicorn as command workers: each worker is one unicorn master with one worker process on the inherited
# listener (unicorn adopts fd 3 through LISTEN_FDS/LISTEN_PID by itself; no -l needed). Run (Debian package
# unicorn; `make setup` installs it):
#   port-sharding serve --host 127.0.0.1 --port 8080 -w 2 --stop-signal QUIT -- \
#     unicorn -c examples/unicorn/unicorn.conf.rb examples/puma/config.ru
# --stop-signal QUIT: unicorn's graceful stop (its TERM is a quick one that cuts requests in flight). unicorn
# sends no READY=1: the supervisor counts a worker ready after --ready-delay (1 s) alive.
worker_processes 1
timeout 30
