// Merges boot profiles into one likely read order.
//
// Per block: confidence = boots that touched it / boots merged; its place in the order is the weighted median
// of its first-touch times across the inputs (weight = how many boots of that input touched it). A median
// ignores one odd boot (a block read late once because a service started late); with two equal weights it is
// their mean. Ties go to higher confidence, then lower block index, so the result is deterministic and does
// not depend on the order of the inputs. Work and output are bounded by the inputs' sizes (each bounded).

import { ProfileMismatchError } from './errors.js'
import { finalizeProfile, checkProfileFits, MAX_PROFILE_BOOTS, MAX_PROFILE_ENTRIES, type BootProfile } from './profile.js'

interface Touches { times: number[], weights: number[], touches: number }

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
    for (const e of p.entries) {
      // Confidences are multiples of 1/255 and boots <= 100, so this recovers the exact touch count.
      const touches = Math.max(1, Math.round(e.confidence * p.boots))
      let t = perBlock.get(e.block)
      if (t === undefined) {
        t = { times: [], weights: [], touches: 0 }
        perBlock.set(e.block, t)
      }
      t.times.push(e.tMs)
      t.weights.push(touches)
      t.touches += touches
    }
  }
  let merged = [...perBlock].map(([block, t]) => ({
    block,
    tMs: Math.round(weightedMedian(t.times, t.weights)),
    confidence: Math.min(1, t.touches / bootsTotal)
  }))
  if (merged.length > MAX_PROFILE_ENTRIES) {
    // Keep the blocks most boots read.
    merged.sort((x, y) => y.confidence - x.confidence || x.tMs - y.tMs || x.block - y.block)
    merged = merged.slice(0, MAX_PROFILE_ENTRIES)
  }
  const profile = finalizeProfile({
    imageId: a.imageId,
    rootHex: a.rootHex,
    blockSizeBytes: a.blockSizeBytes,
    blockCount: a.blockCount,
    boots: Math.min(bootsTotal, MAX_PROFILE_BOOTS),
    entries: merged
  })
  // Sort after quantizing, so that equal confidences compare equal.
  profile.entries.sort((x, y) => x.tMs - y.tMs || y.confidence - x.confidence || x.block - y.block)
  return finalizeProfile(profile)
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
