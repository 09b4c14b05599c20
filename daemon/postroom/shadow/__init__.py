"""Shadow mode beside Loops: the Loops route, its events in, routing, comparison and the guard."""
