"""CWM's special tokens: names, roles and the ids the released 32B model uses (SPEC §1).

Every codec (traces, chat) builds its text from these strings; the tokenizer maps them to ids. A model trained here
keeps the names and relocates the ids after its own vocabulary.
"""

# The label of a position the loss skips (PyTorch's and transformers' convention): data writes it, the model's
# loss reads it.
IGNORE = -100

BEGIN_OF_TEXT = "<|begin_of_text|>"
END_OF_TEXT = "<|end_of_text|>"
PAD = "<|pad|>"
START_HEADER = "<|start_header_id|>"
END_HEADER = "<|end_header_id|>"
END_OF_MESSAGE = "<|eom_id|>"
END_OF_TURN = "<|eot_id|>"
FRAME_SEP = "<|frame_sep|>"
ACTION_SEP = "<|action_sep|>"
RETURN_SEP = "<|return_sep|>"
CALL_SEP = "<|call_sep|>"
LINE_SEP = "<|line_sep|>"
EXCEPTION_SEP = "<|exception_sep|>"
ARG_SEP = "<|arg_sep|>"
TRACE_CONTEXT_START = "<|trace_context_start|>"
THINKING_START = "<|reasoning_thinking_start|>"
THINKING_END = "<|reasoning_thinking_end|>"

#: Special ids after the BPE tokens, in every vocabulary (CWM's named ones among reserved ones).
NUM_SPECIAL = 256

#: name -> id in the released CWM tokenizer (128,000 BPE tokens, then 256 reserved ids).
CWM_IDS: dict[str, int] = {
    BEGIN_OF_TEXT: 128000,
    END_OF_TEXT: 128001,
    PAD: 128004,
    START_HEADER: 128006,
    END_HEADER: 128007,
    END_OF_MESSAGE: 128008,
    END_OF_TURN: 128009,
    FRAME_SEP: 128100,
    ACTION_SEP: 128101,
    RETURN_SEP: 128102,
    CALL_SEP: 128103,
    LINE_SEP: 128104,
    EXCEPTION_SEP: 128105,
    ARG_SEP: 128106,
    TRACE_CONTEXT_START: 128107,
    THINKING_START: 128120,
    THINKING_END: 128121,
}

#: Generation stops at any of these (end of text, end of message, end of turn).
STOP_TOKENS = (END_OF_TEXT, END_OF_MESSAGE, END_OF_TURN)


def special_token_fields(vocab_size: int) -> dict:
    """The begin- and end-of-text ids a model config (``bos_token_id``, ``eos_token_id``) names for a vocabulary laid
    out as CWM's: BPE tokens, then ``NUM_SPECIAL`` special ids in CWM's order (as ``opencwm.tokenizer`` lays out
    every tokenizer); for CWM's own 128,256 tokens, the released model's ids."""
    offset = vocab_size - NUM_SPECIAL - CWM_IDS[BEGIN_OF_TEXT]  # CWM's specials start with begin of text
    return {"bos_token_id": CWM_IDS[BEGIN_OF_TEXT] + offset,
            "eos_token_id": [CWM_IDS[name] + offset for name in STOP_TOKENS]}
