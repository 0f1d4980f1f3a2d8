"""Acting: actor workers and their supervisor, env-only actors, the central inference server, and
the segments every acting process pushes."""
