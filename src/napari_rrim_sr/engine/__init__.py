"""The engine: arrays in, arrays out (normalise, tile, run the model, untile); no files, no Qt."""
