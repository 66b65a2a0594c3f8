"""The corpus pipeline: CommonCrawl WARC/WET to weighted, tokenized Megatron shards (see DESIGN.md)."""
