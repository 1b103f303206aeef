/**
 * How far quantized logits are from the reference ones: the accuracy report of issue 6.
 * relError = ||got - ref|| / ||ref|| over all rows (Frobenius), top1Agreement = fraction of
 * rows whose argmax agrees, plus the worst row's relative error and the largest |difference|.
 */
export interface LogitsAccuracy {
  readonly numRows: number;
  readonly relError: number;
  readonly maxRowRelError: number;
  readonly maxAbsError: number;
  readonly top1Agreement: number;
}

/** ref and got: [numRows, vocabSize] row-major. */
export function compareLogits(ref: Float32Array, got: Float32Array, vocabSize: number): LogitsAccuracy {
  if (ref.length !== got.length || ref.length % vocabSize !== 0) {
    throw new RangeError(`compareLogits: ${ref.length} reference and ${got.length} values are not rows of ${vocabSize}`);
  }
  const numRows = ref.length / vocabSize;
  let diff2 = 0, ref2 = 0, maxAbsError = 0, maxRowRelError = 0, agree = 0;
  for (let r = 0; r < numRows; r++) {
    let rowDiff2 = 0, rowRef2 = 0;
    let refBest = 0, gotBest = 0;
    for (let v = 0; v < vocabSize; v++) {
      const i = r * vocabSize + v;
      const d = got[i]! - ref[i]!;
      rowDiff2 += d * d;
      rowRef2 += ref[i]! * ref[i]!;
      maxAbsError = Math.max(maxAbsError, Math.abs(d));
      if (ref[i]! > ref[r * vocabSize + refBest]!) refBest = v;
      if (got[i]! > got[r * vocabSize + gotBest]!) gotBest = v;
    }
    diff2 += rowDiff2;
    ref2 += rowRef2;
    maxRowRelError = Math.max(maxRowRelError, Math.sqrt(rowDiff2 / Math.max(rowRef2, Number.MIN_VALUE)));
    if (refBest === gotBest) agree++;
  }
  return {
    numRows,
    relError: Math.sqrt(diff2 / Math.max(ref2, Number.MIN_VALUE)),
    maxRowRelError,
    maxAbsError,
    top1Agreement: numRows ? agree / numRows : 1,
  };
}

export function formatAccuracy(label: string, a: LogitsAccuracy): string {
  return `${label}: rel error ${(a.relError * 100).toFixed(2)}% (worst row ${(a.maxRowRelError * 100).toFixed(2)}%), ` +
    `max |diff| ${a.maxAbsError.toFixed(4)}, top-1 agreement ${(a.top1Agreement * 100).toFixed(1)}% of ${a.numRows} rows`;
}
