"""Training data: documents, packing into fixed-length sequences with document ids and loss masks, mixtures."""
