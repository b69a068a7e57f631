"""Images: decoding and the model's exact transform (`preprocess`), and the perceptual
fingerprints that find copies of one picture (`perceptual`)."""
