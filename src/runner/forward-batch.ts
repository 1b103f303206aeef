/**
 * The flattened batch one forward pass runs on (host side). The runner builds it
 * from scheduled sequences and uploads each array with one copy.
 */
export interface ForwardBatch {
  readonly numSeqs: number;
  readonly numTokens: number;
  /** i32 [numTokens] */
  readonly tokenIds: Int32Array;
  /** i32 [numTokens] absolute positions */
  readonly positions: Int32Array;
  /** i32 [numTokens] KV-cache slot of each token (block * blockSize + offset) */
  readonly slotMapping: Int32Array;
  /** i32 [numSeqs + 1] */
  readonly cuSeqlensQ: Int32Array;
  /** i32 [numSeqs] KV length of each sequence after this step */
  readonly contextLens: Int32Array;
  /** i32 [numSeqs * maxBlocksPerSeq], padded with -1 */
  readonly blockTables: Int32Array;
  /** this batch's table width: the most blocks one of its sequences reaches (at most the runner's) */
  readonly maxBlocksPerSeq: number;
  /** i32 [numSeqs]: row of each sequence's last token (the one that yields logits) */
  readonly logitsIndices: Int32Array;
  /**
   * Async scheduling, i32 [numTokens]: where >= 0, the token is still being sampled by the
   * previous step; its id is that row of the previous step's sampled ids, read on the device
   * (tokenIds holds 0 there). Absent when every token id is known.
   */
  readonly prevSampledRows?: Int32Array;
}
