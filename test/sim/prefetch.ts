// Issue 5's prefetch model for the simulator, driven by the production planner (src/prefetch/planner.ts).
//
// The profile is learned from the trace itself, as if from an earlier boot: the trace's reads go through
// src/prefetch's recorder (first touch of each block, time = the trace's think time so far) and become a
// one-boot BootProfile. Per agent, a read-ahead state follows the VM's reads (observeRead: position in the
// profile, window x2 on a hit, /2 on a miss) and planReadAhead picks the next missing blocks; when the
// read-ahead has nothing left (or the boot is over), planIdle pulls the rest of the image.
//
// The flow model has no priority classes (ports are FIFO), so prefetch yields to demand reads by gating:
// no prefetch transfer is issued while the agent's VM waits for a read that missed, none at the instant a
// read is issued (think time 0), and at most maxInFlightBlocks prefetch blocks are in flight per agent, so a
// demand read issued after a think queues behind at most that many blocks on its download port.

import {
  createRecorder, IDLE_START, PREFETCH_DEFAULTS, indexProfile, newReadAhead, observeRead, planIdle, planReadAhead, readAheadParams
} from '../../src/prefetch/index.js'
import type { BootProfile, IdleCursor, ProfileIndex, ReadAheadParams, ReadAheadState } from '../../src/prefetch/index.js'
import type { Engine, PrefetchModel, SimNode } from './engine.js'
import type { Trace } from './trace.js'

export interface PrefetchConfig {
  /** Prefetch blocks in flight per agent (default 4: 256 KiB at 64 KiB blocks). */
  maxInFlightBlocks?: number
  /** After the read-ahead runs out or the boot ends, fetch the rest of the image (default true). */
  idle?: boolean
  /** Read-ahead window overrides (bytes), as in readAheadParams. */
  initialWindowBytes?: number
  maxWindowBytes?: number
  /**
   * Read ahead while the VM reads back to back, as the daemon's prefetcher does (its read-ahead runs beside
   * the VM's reads, not only in think time): a pump after every read, whether or not a demand read waits, in
   * the daemon's batches (PREFETCH_DEFAULTS: 1 MiB each, one fetch, so one request per source; 2 in flight
   * unless maxInFlightBlocks says otherwise). Off by default (the model of issue 5). It models the testbed's
   * `--vmt-profile` row (prefetch.test.ts, test/sim/README.md).
   */
  backToBack?: boolean
}

/** The trace as a one-boot profile (dense block ids; reads at the trace's cumulative think time). */
export function profileFromTrace (trace: Trace): BootProfile {
  const bs = trace.blockSizeBytes
  const rec = createRecorder({
    imageId: 'image', rootHex: '00', blockSizeBytes: bs, blockCount: trace.blockCount, instanceStartMs: 0,
    recordWindowMs: Math.max(1, Math.ceil(trace.thinkTotalMs) + 1)
  })
  let t = 0
  for (const r of trace.reads) {
    t += r.thinkMs
    for (const b of r.blocks) rec.noteRead(t, b * bs, bs)
  }
  return rec.toProfile()
}

interface AgentState {
  ra: ReadAheadState
  idle: IdleCursor
  inFlight: number
  /** backToBack: blocks of batches not yet wholly in (a batch frees its room when its last block lands). */
  batchedInFlight: number
}

export class PlannerPrefetch implements PrefetchModel {
  readonly profile: BootProfile
  readonly index: ProfileIndex
  readonly params: ReadAheadParams
  readonly maxInFlight: number
  readonly idleEnabled: boolean
  readonly backToBack: boolean
  /** backToBack: blocks per batch (the daemon's, PREFETCH_DEFAULTS.batchBytes). */
  readonly batchBlocks: number
  /** Blocks fetched by prefetch (issued; a demand read may have joined the same fetch). */
  issuedBlocks = 0
  private readonly st = new Map<number, AgentState>()

  constructor (readonly trace: Trace, cfg: PrefetchConfig = {}) {
    this.profile = profileFromTrace(trace)
    this.index = indexProfile(this.profile)
    this.params = readAheadParams(trace.blockSizeBytes, {
      ...(cfg.initialWindowBytes !== undefined ? { initialWindowBytes: cfg.initialWindowBytes } : {}),
      ...(cfg.maxWindowBytes !== undefined ? { maxWindowBytes: cfg.maxWindowBytes } : {})
    })
    this.backToBack = cfg.backToBack ?? false
    this.batchBlocks = Math.max(1, Math.floor(PREFETCH_DEFAULTS.batchBytes / trace.blockSizeBytes))
    this.maxInFlight = Math.max(1, cfg.maxInFlightBlocks ?? (this.backToBack ? PREFETCH_DEFAULTS.maxInFlightBatches * this.batchBlocks : 4))
    this.idleEnabled = cfg.idle ?? true
  }

  private state (n: SimNode): AgentState {
    let s = this.st.get(n.idx)
    if (s === undefined) {
      s = { ra: newReadAhead(n.id, this.params), idle: IDLE_START, inFlight: 0, batchedInFlight: 0 }
      this.st.set(n.idx, s)
    }
    return s
  }

  onThink (n: SimNode, _nextReadIdx: number, thinkMs: number, sim: Engine): readonly number[] {
    if (thinkMs > 0 || this.backToBack) this.pump(n, sim)
    return []
  }

  onRead (n: SimNode, readIdx: number, hit: boolean): void {
    const blocks = this.trace.reads[readIdx]?.blocks
    if (blocks === undefined || blocks.length === 0) return
    // a read's dense ids need not be contiguous: observe its furthest block in the profile (what
    // observeRead computes over a contiguous range in the daemon)
    let far = blocks[0]
    for (const b of blocks) if (this.index.positionOf(b) > this.index.positionOf(far)) far = b
    const s = this.state(n)
    s.ra = observeRead(this.index, s.ra, { firstBlock: far, lastBlock: far, hit }, this.params)
  }

  onBootDone (n: SimNode, sim: Engine): void { this.pump(n, sim) }

  /** Issues prefetch fetches for n up to the in-flight bound, unless its VM waits for a demand read (backToBack: even then). */
  pump (n: SimNode, sim: Engine): void {
    if (!n.alive || (n.demandWaiting && !this.backToBack) || n.isSeed || n.held >= sim.blockCount) return
    const s = this.state(n)
    // backToBack: room is counted in whole batches, as the daemon's prefetcher launches and settles them.
    const budget = this.maxInFlight - (this.backToBack ? s.batchedInFlight : s.inFlight)
    if (budget <= 0 || (this.backToBack && budget < Math.min(this.batchBlocks, this.maxInFlight))) return
    const filter = { has: (b: number) => n.has[b] === 1, inFlight: (b: number) => n.pending.has(b) }
    let blocks = n.doneMs < 0 ? planReadAhead(this.index, [s.ra], filter, this.params, budget) : []
    if (blocks.length === 0 && this.idleEnabled && s.idle.phase !== 'done') {
      const plan = planIdle(this.index, sim.blockCount, s.idle, filter, budget)
      s.idle = plan.cursor
      blocks = plan.blocks
    }
    if (this.backToBack) {
      for (let i = 0; i < blocks.length; i += this.batchBlocks) this.launchBatch(n, sim, s, blocks.slice(i, i + this.batchBlocks))
      return
    }
    for (const b of blocks) {
      s.inFlight++
      this.issuedBlocks++
      sim.need(n, b, () => {
        s.inFlight--
        // the next batch when this one lands, if the VM is thinking (or done) and not waiting for a read
        this.pump(n, sim)
      }, true)
    }
  }

  /** backToBack: one batch asked at one moment (one request per source); its room frees when all of it is in. */
  private launchBatch (n: SimNode, sim: Engine, s: AgentState, batch: readonly number[]): void {
    let left = batch.length
    s.batchedInFlight += batch.length
    for (const b of batch) {
      this.issuedBlocks++
      sim.need(n, b, () => {
        if (--left > 0) return
        s.batchedInFlight -= batch.length
        this.pump(n, sim)
      }, true)
    }
  }
}

/** The model for a run (one per engine: it keeps per-agent state). */
export function makePrefetch (trace: Trace, cfg: PrefetchConfig = {}): PlannerPrefetch {
  return new PlannerPrefetch(trace, cfg)
}
