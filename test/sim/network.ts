// The simulated network: hosts with upload and download ports, racks with an uplink port each way, and
// per-link latency.
//
// Flow model: every port is a work-conserving queue that serves bytes at its capacity in arrival order,
// at the granularity of one block (64 KiB). A block transfer goes through the sender's upload port, the
// two rack uplinks when it crosses racks, and the receiver's download port; each port takes it as soon as
// it is free (independently of the others: no port idles while waiting for another, as with cut-through
// fluid flows), and the block is complete when the last port is done, plus the link latency. Requests are
// small (a read is at most 16 blocks), so concurrent requesters interleave at block granularity and share
// a bottleneck port equally over time (checked in test/sim/network.test.ts against the fair-share rate).
// O(ports) per block, no global recomputation: this is what keeps 10,000 agents within seconds.

import { CalendarSlab, CpuQueue } from './cpu-queue.js'
import type { LinkProfile } from './scenario.js'
import type { Rng } from './rng.js'

export interface Port {
  /** Capacity in bytes per millisecond. */
  capBytesPerMs: number
  freeAtMs: number
  /** Busy time accumulated (for load adverts). */
  busyMs: number
}

export interface Host {
  rack: number
  /** Views of the host's ports (the state lives in the network's flat arrays: HostPorts). */
  up: Readonly<Port>
  down: Readonly<Port>
  /** This host's share of link latency (heterogeneous profile). */
  latencyMs: number
}

const mbpsToBytesPerMs = (mbps: number): number => mbps * 125

function port (mbps: number): Port { return { capBytesPerMs: mbpsToBytesPerMs(mbps), freeAtMs: 0, busyMs: 0 } }

/**
 * The hosts' upload or download ports as flat arrays indexed by host: a block touches two numbers per port
 * instead of a host object and a port object each (cache misses at 10,000 hosts).
 */
class HostPorts {
  cap: Float64Array = new Float64Array(1024)
  free: Float64Array = new Float64Array(1024)
  busy: Float64Array = new Float64Array(1024)

  add (i: number, p: Port): void {
    if (i >= this.cap.length) {
      const grow = (a: Float64Array): Float64Array => { const b = new Float64Array(2 * a.length); b.set(a); return b }
      this.cap = grow(this.cap); this.free = grow(this.free); this.busy = grow(this.busy)
    }
    this.cap[i] = p.capBytesPerMs; this.free[i] = p.freeAtMs; this.busy[i] = p.busyMs
  }

  /** Queues `sizeBytes` at host i's port, ready at readyMs; returns when the port is done with it (as take()). */
  take (i: number, sizeBytes: number, readyMs: number): number {
    const free = this.free
    const start = free[i] > readyMs ? free[i] : readyMs
    const dur = sizeBytes / this.cap[i]
    free[i] = start + dur
    this.busy[i] += dur
    return free[i]
  }

  view (i: number): Readonly<Port> {
    const ports = this
    return {
      get capBytesPerMs () { return ports.cap[i] },
      get freeAtMs () { return ports.free[i] },
      get busyMs () { return ports.busy[i] }
    }
  }
}

/** CPU of the hosts (the cost model): a core count per host, or one pool shared by every host (the testbed). */
export interface CpuProfile {
  coresPerHost: number
  sharedCores?: number
}

export class Network {
  readonly hosts: Host[] = []
  /** One CPU calendar per host (cpu-queue.ts's intervals, all hosts in one flat buffer), unless one pool is shared by all. */
  private readonly calendars = new CalendarSlab()
  /**
   * CPU that every agent spends regardless of blocks (adverts received, heartbeats), in ms per second per
   * agent: taken off the capacity left for block work.
   */
  backgroundCpuMsPerS = 0
  /** Background CPU per agent so far (ms): the systems add each second's rate as it is set. */
  backgroundCpuMsPerAgent = 0
  private sharedCpu: CpuQueue | undefined
  readonly rackUp: Port[] = []
  readonly rackDown: Port[] = []
  private readonly upPorts = new HostPorts()
  private readonly downPorts = new HostPorts()
  private rackOf: Int32Array = new Int32Array(1024)
  /** Bytes that crossed a rack uplink (either direction). */
  crossRackBytes = 0

  constructor (readonly profile: LinkProfile, private readonly rng: Rng, readonly cpuProfile: CpuProfile = { coresPerHost: 1 }) {
    if (cpuProfile.sharedCores !== undefined) this.sharedCpu = new CpuQueue()
  }

  /**
   * Books `cpuMs` of CPU work at host a, ready at readyMs (now or later: the clock is nowMs); returns when it
   * is done. The work takes the first idle time of the host's cores (or the shared pool) from readyMs on
   * (cpu-queue.ts), at the capacity left by the background load.
   */
  /** CPU work queued at host a so far (ms of one core, blocks and instance creation; background not included). */
  cpuWorkMs (a: number): number { return this.calendars.work(a) }

  cpu (a: number, cpuMs: number, readyMs: number, nowMs: number): number {
    const shared = this.sharedCpu !== undefined
    this.calendars.addWork(a, cpuMs)
    const agents = shared ? this.hosts.length : 1
    const cores = shared ? this.cpuProfile.sharedCores as number : this.cpuProfile.coresPerHost
    // background work takes its share first; at least 5 % of the cores stay for blocks (the loop still turns)
    const left = Math.max(0.05 * cores, cores - agents * this.backgroundCpuMsPerS / 1000)
    return shared ? (this.sharedCpu as CpuQueue).book(nowMs, readyMs, cpuMs / left) : this.calendars.book(a, nowMs, readyMs, cpuMs / left)
  }

  addHost (): number {
    const i = this.hosts.length
    const p = this.profile
    let host: { rack: number, up: Port, down: Port, latencyMs: number }
    if (p.kind === 'uniform') {
      host = { rack: 0, up: port(p.upMbps), down: port(p.downMbps), latencyMs: 0 }
    } else if (p.kind === 'racks') {
      const rack = Math.floor(i / p.hostsPerRack)
      while (this.rackUp.length <= rack) { this.rackUp.push(port(p.rackUplinkMbps)); this.rackDown.push(port(p.rackUplinkMbps)) }
      host = { rack, up: port(p.hostMbps), down: port(p.hostMbps), latencyMs: 0 }
    } else {
      let x = this.rng.next() * p.classes.reduce((s, c) => s + c.fraction, 0)
      let cls = p.classes[p.classes.length - 1]
      for (const c of p.classes) { if (x < c.fraction) { cls = c; break } x -= c.fraction }
      host = { rack: 0, up: port(cls.upMbps), down: port(cls.downMbps), latencyMs: this.rng.range(p.hostLatencyMinMs, p.hostLatencyMaxMs) }
    }
    this.upPorts.add(i, host.up)
    this.downPorts.add(i, host.down)
    if (i >= this.rackOf.length) { const r = new Int32Array(2 * this.rackOf.length); r.set(this.rackOf); this.rackOf = r }
    this.rackOf[i] = host.rack
    this.hosts.push({ rack: host.rack, up: this.upPorts.view(i), down: this.downPorts.view(i), latencyMs: host.latencyMs })
    this.calendars.add()
    return i
  }

  latencyMs (a: number, b: number): number {
    const p = this.profile
    if (p.kind === 'uniform') return p.latencyMs
    const ha = this.hosts[a]; const hb = this.hosts[b]
    if (p.kind === 'racks') return ha.rack === hb.rack ? p.intraRackLatencyMs : p.interRackLatencyMs
    return ha.latencyMs + hb.latencyMs
  }

  /** Queue one block of `sizeBytes` from a to b, ready at readyMs; returns when it has fully arrived at b. */
  transfer (a: number, b: number, sizeBytes: number, readyMs: number): number {
    let done = this.upPorts.take(a, sizeBytes, readyMs)
    const ra = this.rackOf[a]; const rb = this.rackOf[b]
    if (ra !== rb) {
      done = Math.max(done, take(this.rackUp[ra], sizeBytes, readyMs), take(this.rackDown[rb], sizeBytes, readyMs))
      this.crossRackBytes += sizeBytes
    }
    done = Math.max(done, this.downPorts.take(b, sizeBytes, readyMs))
    return done + this.latencyMs(a, b)
  }

  uploadBytesPerMs (a: number): number { return this.upPorts.cap[a] }
  downloadBytesPerMs (a: number): number { return this.downPorts.cap[a] }
  /** Busy time of host a's upload port so far (ms): the load meter. */
  uploadBusyMs (a: number): number { return this.upPorts.busy[a] }
}

function take (p: Port, sizeBytes: number, readyMs: number): number {
  const start = p.freeAtMs > readyMs ? p.freeAtMs : readyMs
  const dur = sizeBytes / p.capBytesPerMs
  p.freeAtMs = start + dur
  p.busyMs += dur
  return p.freeAtMs
}
