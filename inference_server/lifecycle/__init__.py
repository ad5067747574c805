"""Model lifecycle: where models come from, how versions load, warm up, serve, drain and unload."""
