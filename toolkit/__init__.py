"""Character-level title generators: data, vocabulary, model, training and sampling."""
