// Scenario files (config/sim/*.json): agents, seeds, link profile, events. Validated with zod; a bad file
// gets an error naming the field.

import { existsSync, readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { z } from 'zod'

export class ScenarioError extends Error {
  override name = 'ScenarioError'
}

const uniform = z.object({
  kind: z.literal('uniform'),
  upMbps: z.number().positive(),
  downMbps: z.number().positive(),
  latencyMs: z.number().nonnegative()
})
const racks = z.object({
  kind: z.literal('racks'),
  hostsPerRack: z.number().int().positive(),
  hostMbps: z.number().positive(),
  /** Each rack's uplink to the core (each direction). */
  rackUplinkMbps: z.number().positive(),
  intraRackLatencyMs: z.number().nonnegative(),
  interRackLatencyMs: z.number().nonnegative()
})
const heterogeneous = z.object({
  kind: z.literal('heterogeneous'),
  classes: z.array(z.object({ fraction: z.number().positive(), upMbps: z.number().positive(), downMbps: z.number().positive() })).min(1),
  /** Each host gets a latency in this range; a link's one-way latency is the sum of its two hosts'. */
  hostLatencyMinMs: z.number().nonnegative(),
  hostLatencyMaxMs: z.number().nonnegative()
})

const event = z.discriminatedUnion('kind', [
  /** A random fraction (or count) of booting agents crash at once. */
  z.object({ kind: z.literal('crash'), atMs: z.number().nonnegative(), fraction: z.number().min(0).max(1).optional(), count: z.number().int().nonnegative().optional() }),
  /** Whole racks crash at once (racks profile). */
  z.object({ kind: z.literal('crashRacks'), atMs: z.number().nonnegative(), racks: z.number().int().positive() }),
  /** The origin (seed 0) crashes; other seeds keep full copies. */
  z.object({ kind: z.literal('crashOrigin'), atMs: z.number().nonnegative() }),
  /** More agents join and boot. */
  z.object({ kind: z.literal('join'), atMs: z.number().nonnegative(), count: z.number().int().positive() }),
  /** From fromMs to toMs, agents crash and fresh ones join at this rate (each per second). */
  z.object({ kind: z.literal('churn'), fromMs: z.number().nonnegative(), toMs: z.number().nonnegative(), perSecond: z.number().positive() })
])

export const scenarioSchema = z.object({
  name: z.string().min(1),
  description: z.string().optional(),
  agents: z.number().int().positive().max(200_000),
  /** Full copies at start: the origin plus seeds - 1 more. */
  seeds: z.number().int().positive().max(64).default(1),
  profile: z.discriminatedUnion('kind', [uniform, racks, heterogeneous]),
  /** Agents start booting uniformly spread over this window (0: all at once). */
  startSpreadMs: z.number().nonnegative().default(0),
  /** Scales the trace's think times (0: reads back to back). */
  thinkTimeScale: z.number().nonnegative().default(1),
  /**
   * 'relative': a read's think time starts when the previous read completed (a VM); 'absolute': reads are due at
   * their trace times from the start, as the benchmarks' replay does (scripts/bench-p2p.ts).
   */
  thinkMode: z.enum(['relative', 'absolute']).default('relative'),
  events: z.array(event).default([]),
  /** vmthunderd topology overrides (TopologyParams fields). */
  topology: z.record(z.string(), z.unknown()).default({}),
  /**
   * vmthunderd: child limit of seeds. The origin sends the whole image once per child (its children have no
   * other depth-0 parent), so its egress is seedChildLimit × image; 2 keeps it at volt's level.
   */
  seedChildLimit: z.number().int().positive().max(4096).default(2),
  /**
   * central: 'blocks', each agent pulls every block its reads touch, whole (a block-granular server); 'reads',
   * each block moves only the bytes the trace's reads ask of it, repeats included, as a cacheless NBD client of
   * nbdkit does (the testbed's replay: 41.9 MiB per boot where the blocks hold 50.1 MiB).
   */
  centralTransfer: z.enum(['blocks', 'reads']).default('blocks'),
  /** Candidates kept per agent (the bounded candidate table of the p2p layer). */
  candidateTable: z.number().int().min(4).max(256).default(16),
  /**
   * Issue 5: also run every system with the planner-driven prefetch model (results `NAME+prefetch`; the CLI's
   * --prefetch does the same).
   */
  prefetch: z.boolean().default(false),
  /** Size of the image the trace was read from: adverts summarize presence over its block groups. */
  imageBytes: z.number().int().positive().default(1024 ** 3),
  /**
   * CPU of the hosts for the cost model: cores per host (the daemon is one event loop: 1), or `sharedCores`
   * for a pool every host shares (the testbed runs all its hosts on this 2-core machine).
   */
  cpu: z.object({ coresPerHost: z.number().positive().default(1), sharedCores: z.number().positive().optional() }).default({ coresPerHost: 1 }),
  /**
   * vmthunderd's CPU costs (test/sim/costs.ts): 'measured' uses config/sim/costs.json (npm run calibrate),
   * 'none' the old cost-free model; an object overrides single fields of the measured ones.
   */
  costs: z.union([z.enum(['measured', 'none']), z.record(z.string(), z.number().nonnegative())]).default('measured'),
  /**
   * Under which load the CPU costs hold: 'quiet' as calibrate measures them (two agents on the machine), or
   * 'testbed': scaled by the factor fitted on a bench:testbed wave (costs.json testbedLoad), for scenarios that
   * model that wave (its agents share 2 cores).
   */
  costLoad: z.enum(['quiet', 'testbed']).default('quiet'),
  /**
   * costLoad 'testbed': the link rate of the bench:testbed waves to take the load of (costs.json
   * testbedLoad.byRate: '1gbit', '100mbit'); absent, or no fit for it: testbedLoad's own.
   */
  testbedRate: z.string().optional(),
  /**
   * vmthunderd: while an agent attaches (no parent yet), blocks may come from any peer that advertises them,
   * the origin included (issue 10 step 4); false: they wait for the first parents (the daemon before it).
   */
  readWhileAttaching: z.boolean().default(true),
  /**
   * vmthunderd: agents whose adverts each agent receives. Absent: all of them (one gossipsub topic per image,
   * as the daemon does today); a number models topic partitioning (test/sim/README.md, gossip at scale).
   */
  advertTopicAgents: z.number().int().positive().optional(),
  /**
   * vmthunderd: overrides of the daemon's advert policy (src/p2p/advert-policy.ts AdvertPolicyParams, as the
   * daemon's `advertPolicy` option takes them), e.g. { "minIntervalMs": 0 } for what-ifs.
   */
  advertPolicy: z.object({
    minIntervalMs: z.number().nonnegative(), softIntervalMs: z.number().nonnegative(), keepAliveMs: z.number().positive(),
    heldSteps: z.number().int().positive(), loadStep: z.number().positive()
  }).partial().strict().default({}),
  /** Stop a run at this simulated time even if agents have not finished. */
  maxSimMs: z.number().positive().default(7_200_000)
})

export type Scenario = z.infer<typeof scenarioSchema>
export type LinkProfile = Scenario['profile']
export type ScenarioEvent = Scenario['events'][number]

const here = dirname(fileURLToPath(import.meta.url))
export const SCENARIO_DIR = resolve(here, '../../config/sim')

export function parseScenario (json: unknown, origin = 'scenario'): Scenario {
  const r = scenarioSchema.safeParse(json)
  if (!r.success) {
    const issue = r.error.issues[0]
    throw new ScenarioError(`${origin}: ${issue.path.join('.') || '(root)'}: ${issue.message}`)
  }
  return r.data
}

/** A name (config/sim/NAME.json) or a path to a JSON file. */
export function loadScenario (nameOrFile: string): Scenario {
  const candidates = [nameOrFile, join(SCENARIO_DIR, `${nameOrFile}.json`), join(SCENARIO_DIR, nameOrFile)]
  const path = candidates.find(p => /\.json$/.test(p) && existsSync(p))
  if (path === undefined) throw new ScenarioError(`no scenario named or at ${nameOrFile} (looked in ${SCENARIO_DIR})`)
  let json: unknown
  try { json = JSON.parse(readFileSync(path, 'utf8')) } catch (err) { throw new ScenarioError(`${path}: ${(err as Error).message}`) }
  return parseScenario(json, path)
}
