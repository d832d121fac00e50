"""Pure nn.Module code: the decoder, vision towers, connectors, generation, saved-model I/O.

Nothing here knows about datasets or training loops."""
