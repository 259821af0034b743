"""transmamba.data: corpora, tokenizer, packing (text), plus synthetic tasks and time series.

Text pipeline: `text.load_documents` (bundled Shakespeare or your files) -> `text.train_val_split` (by
document) -> `tokenizer.get_tokenizer` (byte-level BPE, cached) -> `packing.pack_documents` (rows with
document boundaries: input_ids, labels, seq_idx) -> `packing.PackedLoader`. `packing.prepare_text_data`
runs all of it.
"""
