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
  /** Each dense id's group among the groups the trace touches (0..groups-1). */
  private readonly groupOf: Int32Array
  readonly groups: number
  /**
   * Per tracked node and group: blocks held, and the first and last arrival (ms, as the arrival array stores them).
   * A group's members span ~220 dense ids (~14 cache lines of arrival times); with these, `level` counts only
   * when the advert was published while the group was filling (a wave at 10,000 agents: pick() was ~12 % of
   * the run, most of it in that loop). Exact: the members that arrived by atMs are all held ones when the last
   * arrived by then, and none when the first came after. The three sit side by side ([held, first, last] per
   * node and group, 12 bytes): a look at a parent's group reads one cache line, not three (pick() at 10,000
   * agents asks this for each parent on every block it requests).
   */
  private counters = new Float32Array(0)
  /** 1 for nodes whose counters follow every arrival since they held nothing (track, arrived). */
  private tracked = new Uint8Array(0)

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
    const dense = new Map<number, number>()
    this.groupOf = Int32Array.from(trace.imageBlocks, b => {
      const g = Math.floor(b / this.groupBlocks)
      let d = dense.get(g)
      if (d === undefined) { d = dense.size; dense.set(g, d) }
      return d
    })
    this.groups = dense.size
    this.groupSize = Int32Array.from(trace.imageBlocks, b => {
      const first = Math.floor(b / this.groupBlocks) * this.groupBlocks
      return Math.min(this.totalBlocks, first + this.groupBlocks) - first
    })
  }

  /** Keeps group counters for `node` from now on; it must hold no block yet (its arrival times all Infinity). */
  track (node: number): void {
    if (node >= this.tracked.length) {
      const cap = Math.max(1024, 2 * node)
      const tracked = new Uint8Array(cap); tracked.set(this.tracked); this.tracked = tracked
      const counters = new Float32Array(3 * cap * this.groups); counters.set(this.counters); this.counters = counters
    }
    this.tracked[node] = 1
    const k = 3 * node * this.groups
    for (let i = 0; i < this.groups; i++) this.counters[k + 3 * i] = 0
  }

  /** Dense block b arrived at a tracked node at atMs (the time written to the arrival array; in time order). */
  arrived (node: number, b: number, atMs: number): void {
    if (node >= this.tracked.length || this.tracked[node] !== 1) return
    const c = this.counters
    const k = 3 * (node * this.groups + this.groupOf[b])
    if (c[k]++ === 0) c[k + 1] = atMs
    c[k + 2] = atMs
  }

  /** The summary level of dense block b's group in an advert published at atMs. */
  level (arrival: Float32Array, base: number, b: number, atMs: number): number {
    const size = this.groupSize[b]
    const node = base / this.members.length
    if (node < this.tracked.length && this.tracked[node] === 1) {
      const c = this.counters
      const k = 3 * (node * this.groups + this.groupOf[b])
      const h = c[k]
      if (h === 0 || c[k + 1] > atMs) return LEVEL_NONE
      if (c[k + 2] <= atMs) return h === size ? LEVEL_ALL : h * 2 >= size ? LEVEL_MOST : LEVEL_SOME
    }
    const m = this.members[b]
    let held = 0
    for (let i = 0; i < m.length; i++) if (arrival[base + m[i]] <= atMs) held++
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
