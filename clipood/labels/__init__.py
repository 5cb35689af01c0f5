"""Labels: label sets and prompt templates (`prompts`), label features C = [ID prompts; mined negatives]
(`label_features`). NegLabel mining itself is the stable module `clipood.negatives`."""
