"""transmamba.eval: scorers for recall tasks (PhoneBook, MQAR, selective copying) and perplexity."""

from transmamba.eval.perplexity import perplexity
from transmamba.eval.recall import evaluate_lengths, phonebook_generate, predict, score

__all__ = ["evaluate_lengths", "perplexity", "phonebook_generate", "predict", "score"]
