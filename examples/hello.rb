# Each connection gets "Hello from ruby process <pid>" and is closed, so you can see the kernel spread
# connections over the workers — and over Python or CLI servers started on the same port.
# Run: (make setup-ruby) ruby examples/hello.rb [PORT [HOST]]
#      then, a few times: nc 127.0.0.1 1234      (and: port-sharding status --port 1234, the gem's command)
require "port_sharding"

port = Integer(ARGV[0] || 1234)
host = ARGV[1] || "0.0.0.0" # every server sharing a port must bind the same address

begin
  PortSharding.serve(port, host: host, mode: :hello)
rescue Interrupt
  # Ctrl-C: drained
end
