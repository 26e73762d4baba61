// The daemon's advert summary (src/p2p/advert.ts: summarize, holdProbability) evaluated lazily over the
// simulator's block arrival times: an advert published at time T says, per group of `groupBlocksFor(image)`
// consecutive image blocks, none / some / most (at least half) / all held, and holdProbability maps that to
// 0 / 0.25 / 0.75 / 1 (1 for an agent holding the whole image). Instead of a bitmap per advert (16,384 blocks
// per publish per agent), the level of a group at T is counted from the arrival times of the group's blocks
// that the trace touches (the only blocks a simulated agent can hold). summary.test.ts checks it against
// summarize + holdProbability.

import { groupBlocksFor, LEVEL_ALL, LEVEL_MOST, LEVEL_NONE, LEVEL_SOME } from '../../src/p2p/advert.js'
import type { Trace } from './trace.js'

export const DEFAULT_IMAGE_BYTES = 1024 ** 3

/** holdProbability's mapping of levels (src/p2p/advert.ts). */
const PROBABILITY = [0, 0.25, 0.75, 1]

export class SummaryModel {
  readonly totalBlocks: number
  readonly groupBlocks: number
  /** Dense ids of the trace blocks in the same image group as each dense id. */
  private readonly members: Int32Array[]
  /** Image blocks in each dense id's group (the last group may be short). */
  private readonly groupSize: Int32Array

  constructor (trace: Pick<Trace, 'imageBlocks' | 'blockSizeBytes'>, imageBytes = DEFAULT_IMAGE_BYTES) {
    const maxBlock = Math.max(0, ...trace.imageBlocks)
    this.totalBlocks = Math.max(Math.ceil(imageBytes / trace.blockSizeBytes), maxBlock + 1)
    this.groupBlocks = groupBlocksFor(this.totalBlocks)
    const byGroup = new Map<number, number[]>()
    trace.imageBlocks.forEach((b, id) => {
      const g = Math.floor(b / this.groupBlocks)
      const l = byGroup.get(g)
      if (l === undefined) byGroup.set(g, [id]); else l.push(id)
    })
    this.members = trace.imageBlocks.map(b => Int32Array.from(byGroup.get(Math.floor(b / this.groupBlocks)) ?? []))
    this.groupSize = Int32Array.from(trace.imageBlocks, b => {
      const first = Math.floor(b / this.groupBlocks) * this.groupBlocks
      return Math.min(this.totalBlocks, first + this.groupBlocks) - first
    })
  }

  /** The summary level of dense block b's group in an advert published at atMs. */
  level (arrival: Float32Array, base: number, b: number, atMs: number): number {
    const m = this.members[b]
    let held = 0
    for (let i = 0; i < m.length; i++) if (arrival[base + m[i]] <= atMs) held++
    const size = this.groupSize[b]
    return held === 0 ? LEVEL_NONE : held === size ? LEVEL_ALL : held * 2 >= size ? LEVEL_MOST : LEVEL_SOME
  }

  /**
   * holdProbability(advert, imageBlock(b)) for the advert an agent published at atMs; `arrival` holds every
   * agent's arrival times (ms, Infinity: absent) from `base`. `complete`: the advert says every block is held.
   */
  holdProbability (arrival: Float32Array, base: number, b: number, atMs: number, complete: boolean): number {
    if (complete) return 1
    return PROBABILITY[this.level(arrival, base, b, atMs)]
  }
}
