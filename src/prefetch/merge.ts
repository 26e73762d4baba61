// Merges boot profiles into one likely read order.
//
// Per block: confidence = boots that touched it / boots merged. Its place in the order is the weighted median
// of its normalized rank across the inputs (rank in that input's order / its length, 0..1; weight = how many boots of that input touched it). Ranks, not raw times, because
// one host boots twice as fast as another (KVM vs TCG, load): times scale, ranks do not. A median ignores one
// odd boot (a block read late once because a service started late); with two equal weights it is their mean.
// `tMs` of a merged entry is the weighted median of its times: typical, informative, not the sort key.
// Ties go to earlier time, higher confidence, lower block index, so the result is deterministic and does not
// depend on the order of the inputs. Work and output are bounded by the inputs' sizes (each bounded).

import { ProfileMismatchError } from './errors.js'
import { finalizeProfile, checkProfileFits, quantizeConfidence, MAX_PROFILE_BOOTS, MAX_PROFILE_ENTRIES, type BootProfile } from './profile.js'

interface Touches { times: number[], ranks: number[], weights: number[], touches: number }

/** Merges `a` with every profile in `more` (recordings are one-boot profiles: see createRecorder). */
export function mergeProfiles (a: BootProfile, ...more: BootProfile[]): BootProfile {
  const all = [a, ...more]
  for (const p of more) {
    try {
      checkProfileFits(p, a)
    } catch (err) {
      throw new ProfileMismatchError(`cannot merge profiles of different images: ${(err as Error).message}`)
    }
  }
  let bootsTotal = 0
  const perBlock = new Map<number, Touches>()
  for (const p of all) {
    bootsTotal += p.boots
    const ranks = normalizedRanks(p)
    for (const [i, e] of p.entries.entries()) {
      // Confidences are multiples of 1/255 and boots <= 100, so this recovers the exact touch count.
      const touches = Math.max(1, Math.round(e.confidence * p.boots))
      let t = perBlock.get(e.block)
      if (t === undefined) {
        t = { times: [], ranks: [], weights: [], touches: 0 }
        perBlock.set(e.block, t)
      }
      t.times.push(e.tMs)
      t.ranks.push(ranks[i])
      t.weights.push(touches)
      t.touches += touches
    }
  }
  const q = (c: number): number => quantizeConfidence(c)
  let merged = [...perBlock].map(([block, t]) => ({
    block,
    key: weightedMedian(t.ranks, t.weights),
    tMs: Math.round(weightedMedian(t.times, t.weights)),
    confidence: Math.min(1, t.touches / bootsTotal)
  }))
  if (merged.length > MAX_PROFILE_ENTRIES) {
    // Keep the blocks most boots read.
    merged.sort((x, y) => q(y.confidence) - q(x.confidence) || x.key - y.key || x.block - y.block)
    merged = merged.slice(0, MAX_PROFILE_ENTRIES)
  }
  // Compare quantized confidences, as the result carries them.
  merged.sort((x, y) => x.key - y.key || x.tMs - y.tMs || q(y.confidence) - q(x.confidence) || x.block - y.block)
  return finalizeProfile({
    imageId: a.imageId,
    rootHex: a.rootHex,
    blockSizeBytes: a.blockSizeBytes,
    blockCount: a.blockCount,
    boots: Math.min(bootsTotal, MAX_PROFILE_BOOTS),
    entries: merged.map(({ block, tMs, confidence }) => ({ block, tMs, confidence }))
  })
}

/**
 * Position in the order scaled to 0..1. Entries with the same time keep their own positions: within one
 * millisecond the recorder's order is the order of first touch (reads of a fast boot share milliseconds), so
 * merging a profile with itself gives the same order back.
 */
export function normalizedRanks (p: BootProfile): Float64Array {
  const n = p.entries.length
  const ranks = new Float64Array(n)
  for (let i = 0; i < n; i++) ranks[i] = (i + 0.5) / n
  return ranks
}

/** The weighted median; when the cumulative weight hits exactly half, the mean of the two middle values. */
export function weightedMedian (values: readonly number[], weights: readonly number[]): number {
  if (values.length === 1) return values[0]
  const idx = values.map((_, i) => i).sort((i, j) => values[i] - values[j])
  const total = weights.reduce((s, w) => s + w, 0)
  let cum = 0
  for (let k = 0; k < idx.length; k++) {
    cum += weights[idx[k]]
    if (cum * 2 === total && k + 1 < idx.length) return (values[idx[k]] + values[idx[k + 1]]) / 2
    if (cum * 2 > total) return values[idx[k]]
  }
  return values[idx[idx.length - 1]]
}
