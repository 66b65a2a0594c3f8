"""GPT math: attention, MLP, blocks, embeddings, and the model as a list of pipeline layers."""
