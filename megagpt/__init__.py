"""megagpt: CommonCrawl to a pretrained, instruction-aligned GPT."""

__version__ = "0.1.0"
