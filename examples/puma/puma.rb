# Puma settings for Puma as command workers (`puma -C examples/puma/puma.rb -b tcp://… examples/puma/config.ru`).
#
# queue_requests false: a connection Puma accepted but whose request has not arrived yet is read by a thread
# instead of waiting in Puma's reactor — on a stop (a reload, a drain) Puma 5 closes such connections unanswered,
# as if they were idle keep-alive ones: about 1 in 50,000 requests under load during a reload, measured here.
queue_requests false
