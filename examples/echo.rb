# The talk's Ruby echo server, on the engine: one worker process per CPU, a real backlog, Ctrl-C drains.
# Run: (make setup-ruby) ruby examples/echo.rb [PORT [HOST]]      then: nc 127.0.0.1 1234
require "port_sharding"

port = Integer(ARGV[0] || 1234)
host = ARGV[1] || "0.0.0.0" # every server sharing a port must bind the same address

begin
  PortSharding.serve(port, host: host, mode: :once) # :once is the talk's loop: one read, echo it, close
rescue Interrupt
  puts "drained, bye"
end
