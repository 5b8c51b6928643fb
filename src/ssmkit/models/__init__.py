"""Backbone and heads built from any registered SequenceLayer."""
from .backbone import Backbone, Block
from .heads import LanguageModel, SequenceClassifier, TokenModel
from .packing import pack_parameters
