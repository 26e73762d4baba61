// A small synchronous-rounds driver of the topology module for property tests: agents publish adverts at
// the end of each round and select parents from the previous round's adverts (so every decision is made
// on information one heartbeat stale, as with gossip), parents admit children with admitChild. The heartbeat
// decisions are the daemon's own (src/topology/driver.ts: planHeartbeat, admission, settleHeartbeat).

import { admitChild, findCycle, planHeartbeat, settleHeartbeat } from '../../src/topology/index.js'
import type { AdmissionReply, Advert, HeartbeatPlan, ParentState, TopologyParams } from '../../src/topology/index.js'
import { Rng } from '../sim/rng.js'

export interface HarnessAgent {
  id: string
  isSeed: boolean
  alive: boolean
  parents: ParentState[]
  depth: number | null
  /** The driver's orphan hold state. */
  orphanedSinceMs: number | null
  children: Set<string>
  /** Working parents after the last heartbeat: what the daemon's next ADMIT to each of them reports (relays count sole children by it). */
  reportedParents: number
  /** Refusals in force: peer → until (ms), as the driver keeps them. */
  excludedUntilMs: Map<string, number>
  x: number
  y: number
  heldBlocks: number
  changes: number
}

export interface HarnessOptions {
  agents: number
  seeds: number
  seed: number
  params: TopologyParams
  /** Relative RTT noise per measurement, e.g. 0.1 for ±10 %. */
  rttNoise: number
  totalBlocks?: number
  /** Child limit of the seeds (the daemon's origin has 1: config p2p.originChildLimit); default params.childLimit. */
  seedChildLimit?: number
}

export class Harness {
  readonly rng: Rng
  readonly agents: HarnessAgent[] = []
  readonly byId = new Map<string, HarnessAgent>()
  published = new Map<string, { advert: Advert, atMs: number }>()
  round = 0
  readonly totalBlocks: number

  constructor (readonly opts: HarnessOptions) {
    this.rng = new Rng(opts.seed)
    this.totalBlocks = opts.totalBlocks ?? 1000
    for (let i = 0; i < opts.seeds + opts.agents; i++) this.addAgent(i < opts.seeds)
    this.publish(0)
  }

  addAgent (isSeed: boolean): HarnessAgent {
    const id = `${isSeed ? 's' : 'a'}${this.agents.length}`
    const a: HarnessAgent = {
      id, isSeed, alive: true, parents: [], depth: isSeed ? 0 : null, orphanedSinceMs: null, children: new Set(), reportedParents: 1, excludedUntilMs: new Map(),
      x: this.rng.next(), y: this.rng.next(), heldBlocks: isSeed ? this.totalBlocks : 0, changes: 0
    }
    this.agents.push(a)
    this.byId.set(id, a)
    return a
  }

  childLimitOf (a: HarnessAgent): number {
    return a.isSeed ? this.opts.seedChildLimit ?? this.opts.params.childLimit : this.opts.params.childLimit
  }

  /** a's children that asked it as their only parent at their last heartbeat (src/p2p/children.ts); `except` not counted. */
  soleChildrenOf (a: HarnessAgent, except?: string): number {
    let count = 0
    for (const c of a.children) if (c !== except && (this.byId.get(c)?.reportedParents ?? 1) === 1) count++
    return count
  }

  get nowMs (): number { return this.round * this.opts.params.heartbeatMs }

  baseRttMs (a: HarnessAgent, b: HarnessAgent): number {
    return 0.2 + 10 * Math.hypot(a.x - b.x, a.y - b.y)
  }

  publish (atMs: number): void {
    for (const a of this.agents) {
      if (!a.alive) continue
      this.published.set(a.id, {
        atMs,
        advert: {
          peerId: a.id, imageId: 'img', rootHex: 'root', seq: this.round, depth: a.depth,
          heldBlocks: a.heldBlocks, totalBlocks: this.totalBlocks, childCount: a.children.size,
          childLimit: this.childLimitOf(a),
          // src/p2p/children.ts soleFull: a relay at its bound of sole children says so
          soleFull: (this.opts.params.soleChildLimit ?? 0) > 0 && !a.isSeed && this.soleChildrenOf(a) >= (this.opts.params.soleChildLimit ?? 0),
          uploadLoad: Math.min(1, a.children.size / Math.max(1, this.childLimitOf(a)))
        }
      })
    }
  }

  step (): void {
    this.round++
    const nowMs = this.nowMs
    const adverts = [...this.published.values()]
    const order = this.rng.shuffle(this.agents.filter(a => a.alive))
    for (const a of order) {
      const candidates = []
      for (const { advert, atMs } of adverts) {
        if (advert.peerId === a.id) continue
        const b = this.byId.get(advert.peerId)
        if (b === undefined) continue
        const noise = 1 + this.opts.rttNoise * (2 * this.rng.next() - 1)
        candidates.push({ advert, receivedAtMs: atMs + 1, rttMs: this.baseRttMs(a, b) * noise })
      }
      const plan = planHeartbeat({
        nowMs, selfPeerId: a.id, selfIsSeed: a.isSeed, candidates, parents: a.parents, depth: a.depth, refusedUntil: a.excludedUntilMs,
        params: this.opts.params, imageId: 'img', rootHex: 'root', childCount: a.children.size
      })
      this.apply(a, plan, nowMs)
    }
    for (const a of this.agents) if (a.alive && !a.isSeed && a.heldBlocks < this.totalBlocks && a.depth !== null) a.heldBlocks++
    this.publish(nowMs + 5)
  }

  apply (a: HarnessAgent, plan: HeartbeatPlan, nowMs: number): void {
    for (const d of plan.selection.dropped) this.byId.get(d.peerId)?.children.delete(a.id)
    const replies = new Map<string, AdmissionReply>()
    // src/p2p/heartbeat.ts: an agent attaching from nothing (detached, no child) may be refused by a relay at its
    // bound of sole children
    const attaching = plan.selfDepth === null && plan.childCount === 0
    for (const { peerId, kept } of plan.ask) {
      const p = this.byId.get(peerId)
      if (p === undefined || !p.alive) { replies.set(peerId, 'error'); continue }
      const ok = kept || admitChild({
        childCount: p.children.size, childLimit: this.childLimitOf(p), isAlreadyChild: p.children.has(a.id), selfDepth: p.depth,
        soleChildren: this.soleChildrenOf(p, a.id), attaching, soleChildLimit: this.opts.params.soleChildLimit ?? 0
      }).admit
      if (ok) p.children.add(a.id)
      replies.set(peerId, ok ? 'accepted' : 'refused')
    }
    const res = settleHeartbeat(plan, {
      nowMs, selfIsSeed: a.isSeed, parents: a.parents, replies, heartbeatMs: this.opts.params.heartbeatMs,
      depthOf: id => this.published.get(id)?.advert.depth ?? null,
      orphanedSinceMs: a.orphanedSinceMs
    })
    a.orphanedSinceMs = res.orphanedSinceMs
    if (res.changed) a.changes++
    a.parents = res.parents
    a.reportedParents = Math.max(1, res.parents.filter(p => !p.failed).length)
    a.excludedUntilMs = res.refusedUntil
    a.depth = res.depth
  }

  /** Crash an agent: its children's next call sees it failed (when `reported`) or silent (advert ages out). */
  crash (a: HarnessAgent, reported: boolean): void {
    a.alive = false
    for (const p of a.parents) this.byId.get(p.peerId)?.children.delete(a.id)
    a.parents = []
    for (const c of a.children) {
      const child = this.byId.get(c)
      if (child === undefined) continue
      if (reported) for (const p of child.parents) if (p.peerId === a.id) p.failed = true
    }
    a.children.clear()
  }

  /** A crashed agent starts again (same id, as a restarted daemon): no parents, no children, a seed at depth 0. */
  restart (a: HarnessAgent): void {
    a.alive = true
    a.parents = []
    a.children.clear()
    a.excludedUntilMs = new Map()
    a.orphanedSinceMs = null
    a.depth = a.isSeed ? 0 : null
  }

  parentGraph (): Map<string, string[]> {
    const g = new Map<string, string[]>()
    for (const a of this.agents) if (a.alive) g.set(a.id, a.parents.map(p => p.peerId).filter(id => this.byId.get(id)?.alive === true))
    return g
  }

  cycle (): string[] | null { return findCycle(this.parentGraph()) }

  /** Live agents that cannot reach a seed through live parent edges. */
  unreachable (): string[] {
    const g = this.parentGraph()
    const ok = new Map<string, boolean>()
    const reach = (id: string, guard: number): boolean => {
      const known = ok.get(id)
      if (known !== undefined) return known
      const a = this.byId.get(id)
      if (a === undefined || !a.alive) return false
      if (a.isSeed) { ok.set(id, true); return true }
      if (guard > this.agents.length) return false
      const r = (g.get(id) ?? []).some(p => reach(p, guard + 1))
      ok.set(id, r)
      return r
    }
    return this.agents.filter(a => a.alive && !reach(a.id, 0)).map(a => a.id)
  }
}
