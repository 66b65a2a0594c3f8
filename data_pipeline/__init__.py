"""The corpus pipeline: CommonCrawl WARC/WET to weighted, tokenized Megatron shards (see docs/design.md)."""
