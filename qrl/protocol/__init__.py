"""The wire protocol: wire (the only code that knows bytes), messages (every schema), transport
(sockets, addresses, keys)."""
