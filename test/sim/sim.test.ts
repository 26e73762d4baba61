// Small scenarios with fixed seeds: the checkers must stay clean and the sanity facts must hold.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { costsOf, CPU_COST_FIELDS, measuredCosts, testbedLoadOf } from './costs.js'
import { Engine } from './engine.js'
import type { System } from './engine.js'
import { publicResult } from './report.js'
import { runScenario, runScenarioParallel } from './run.js'
import type { RunResult } from './run.js'
import { loadScenario, parseScenario, ScenarioError } from './scenario.js'
import type { Scenario } from './scenario.js'
import { loadTrace } from './trace.js'

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')
const trace = loadTrace(join(root, 'test/fixtures/debian12-boot.reads.csv'))

function scenario (name: string, over: Partial<Scenario> = {}): Scenario { return { ...loadScenario(name), ...over } }

function assertClean (r: RunResult, label: string): void {
  for (const [name, s] of Object.entries(r.systems)) {
    const where = `${label}/${name}`
    assert.equal(s.checks.cycles, 0, `${where}: cycle ${JSON.stringify(s.checks.firstCycle)}`)
    assert.equal(s.checks.fanoutViolations, 0, `${where}: fan-out over the limit`)
    assert.equal(s.checks.absentReads, 0, `${where}: a read completed from an absent block`)
    assert.equal(s.checks.unreachableAtEnd, 0, `${where}: live agents cut off from every seed at the end`)
    assert.equal(s.unfinished, 0, `${where}: unfinished agents`)
    assert.ok(s.checks.runs >= 2, `${where}: the checkers ran`)
    assert.ok(s.completionMaxMs !== null && s.completionMaxMs >= r.boundMs, `${where}: faster than the lower bound`)
  }
}

test('uniform, 40 agents: checkers clean, nobody beats the bound, vmthunderd origin egress far below central', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform'), trace, agents: 40, seed: 1 })
  assertClean(r, 'uniform')
  const c = r.systems.central; const v = r.systems.vmthunderd; const volt = r.systems.volt
  for (const s of [c, v, volt]) assert.ok((s.completionMaxMs as number) >= trace.thinkTotalMs, 'no boot is shorter than its think time')
  assert.ok(v.originEgressBytes * 4 < c.originEgressBytes, `vmthunderd origin egress ${v.originEgressBytes} vs central ${c.originEgressBytes}`)
  assert.equal(c.originEgressBytes, 40 * trace.blockCount * trace.blockSizeBytes, 'central: every agent pulls every block from the origin once')
  assert.ok(v.maxFanout <= 8 && volt.maxFanout <= 2)
  assert.equal(volt.maxDepth, Math.floor(Math.log2(41)), 'volt: a breadth-first binary tree')
})

test('no think time: central is origin-bound (N·F/u_s) and never faster than the bound', { timeout: 120_000 }, () => {
  // network only (no CPU costs): the flow model's own facts
  const r = runScenario({ scenario: scenario('uniform', { thinkTimeScale: 0, costs: 'none' }), trace, agents: 30, seed: 2 })
  assertClean(r, 'no-think')
  const c = r.systems.central
  const originBoundMs = 30 * trace.blockCount * trace.blockSizeBytes / 125_000 // 1 Gb/s = 125,000 bytes/ms
  assert.ok((c.completionMaxMs as number) >= originBoundMs * 0.999, `central ${c.completionMaxMs} ms < origin-bound ${originBoundMs} ms`)
  assert.ok((c.completionMaxMs as number) < originBoundMs * 1.5, 'the origin stays busy (work-conserving flow model)')
  assert.ok((r.systems.vmthunderd.completionMaxMs as number) < (c.completionMaxMs as number))
})

test('same seed, same result JSON; another seed, another result', { timeout: 120_000 }, async () => {
  const sc = scenario('uniform-crash10')
  const a = publicResult(runScenario({ scenario: sc, trace, agents: 30, seed: 7 }))
  const b = publicResult(await runScenarioParallel({ scenario: sc, trace, agents: 30, seed: 7 }))
  assert.deepEqual(b, a)
  const c = publicResult(runScenario({ scenario: sc, trace, agents: 30, seed: 8 }))
  assert.notDeepEqual(c, a)
})

test('10 % crash mid-boot: vmthunderd heals within a few heartbeats, volt waits for its 30 s detection', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform-crash10'), trace, agents: 60, seed: 3 })
  assertClean(r, 'crash10')
  const v = r.systems.vmthunderd; const volt = r.systems.volt
  assert.equal(v.crashed, 6)
  assert.ok(v.healMs !== null && v.healMs <= 3000, `vmthunderd heal ${v.healMs}`)
  assert.ok(volt.healMs !== null && volt.healMs >= 30_000, `volt heal ${volt.healMs}`)
  assert.equal(r.systems.central.healMs, 0, 'central: crashed clients cut nobody off')
})

test('origin failure with a second full copy: everyone still finishes', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('origin-failure'), trace, agents: 40, seed: 4 })
  assertClean(r, 'origin-failure')
  assert.ok((r.systems.central.healMs as number) >= 30_000)
  assert.ok((r.systems.vmthunderd.healMs as number) < (r.systems.volt.healMs as number))
})

test('racks, two whole racks crash: checkers clean, vmthunderd heals in seconds, volt after 30 s', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('racks-crash-racks'), trace, agents: 200, seed: 5 })
  assertClean(r, 'racks')
  assert.equal(r.systems.vmthunderd.crashed, 80)
  assert.ok((r.systems.vmthunderd.healMs as number) < 5000, `vmthunderd heal ${r.systems.vmthunderd.healMs}`)
  assert.ok((r.systems.volt.healMs as number) >= 30_000)
  assert.ok(r.systems.central.crossRackBytes > 0 && r.systems.volt.crossRackBytes > 0, 'rack uplinks carry the cross-rack traffic')
})

test('churn and late joins: checkers clean', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('churn'), trace, agents: 40, seed: 6, systems: ['volt', 'vmthunderd'] })
  assertClean(r, 'churn')
  assert.ok(r.systems.vmthunderd.finished >= 40)
})

test('the checkers catch a broken system (cycle, fan-out, cut-off agents)', { timeout: 30_000 }, () => {
  const e = new Engine({ scenario: scenario('uniform', { maxSimMs: 5_000 }), trace, agents: 6, seed: 1 })
  // agents point at each other in a ring and all ask the origin: a cycle, no path to the seed
  const broken: System = {
    name: 'volt', fanoutLimit: 0, init () {}, onNodeAdded () {}, onCrash () {},
    chooseSource: () => e.seeds[0],
    parentsOf: n => n.isSeed ? [] : [n.idx === e.nodes.length - 1 ? 1 : n.idx + 1]
  }
  e.run(broken)
  assert.ok(e.check.cycleChecksFailed > 0)
  assert.ok(e.check.fanoutViolations > 0)
  assert.ok(e.check.unreachable.some(([, u]) => u === 6))
})

test('testbed scenario: the CPU cost model makes vmthunderd slower than without costs, and the table has every row', { timeout: 60_000 }, () => {
  const sc = scenario('testbed-1g')
  const withCosts = runScenario({ scenario: sc, trace, agents: 8, seed: 1, systems: ['vmthunderd'] }).systems.vmthunderd
  const free = runScenario({ scenario: { ...sc, costs: 'none' }, trace, agents: 8, seed: 1, systems: ['vmthunderd'] }).systems.vmthunderd
  assertClean({ boundMs: 0, systems: { vmthunderd: withCosts } } as unknown as RunResult, 'testbed-1g')
  assert.ok((withCosts.completionMaxMs as number) > 2 * (free.completionMaxMs as number), `with costs ${withCosts.completionMaxMs} ms, without ${free.completionMaxMs} ms`)
  assert.ok(withCosts.adverts !== undefined && withCosts.adverts.published > 8, 'adverts are counted')
  // what the testbed measures beside the time: each host receives the blocks its reads touch (no prefetch in
  // the scenario), block requests to peers are counted, and the CPU per host is of the testbed's order
  // (3.6-8.6 CPU-s per host per boot on 2026-11-28), not the 21:02 calibration's idle figure times the run
  const touched = trace.blockCount * trace.blockSizeBytes
  assert.ok(withCosts.perAgent.receivedBytes >= touched && withCosts.perAgent.receivedBytes < 1.1 * touched, `received ${withCosts.perAgent.receivedBytes}`)
  assert.ok(withCosts.peerBlockRequests > 0 && withCosts.requestsCharged > 0)
  assert.ok(withCosts.perAgent.cpuMs > 1000 && withCosts.perAgent.cpuMs < 20_000, `CPU per host ${withCosts.perAgent.cpuMs} ms`)
  assert.equal(free.perAgent.cpuMs, 0)
})

test('every VM read costs its agent the measured read cost: with think times, one agent\'s boot lasts at least its reads times the read wall time longer', { timeout: 60_000 }, () => {
  const wallMs = 3
  const sc = scenario('uniform', { thinkTimeScale: 1, thinkMode: 'relative', costs: { readCpuMs: 0.5, readWallMs: wallMs } })
  const withReads = runScenario({ scenario: sc, trace, agents: 1, seed: 1, systems: ['vmthunderd'] }).systems.vmthunderd
  const without = runScenario({ scenario: { ...sc, costs: { readCpuMs: 0, readWallMs: 0 } }, trace, agents: 1, seed: 1, systems: ['vmthunderd'] }).systems.vmthunderd
  assertClean({ boundMs: 0, systems: { vmthunderd: withReads } } as unknown as RunResult, 'read cost')
  const added = (withReads.completionMaxMs as number) - (without.completionMaxMs as number)
  assert.ok(added >= trace.reads.length * wallMs * 0.999, `added ${added} ms for ${trace.reads.length} reads of ${wallMs} ms`)
  assert.ok(withReads.perAgent.cpuMs - without.perAgent.cpuMs >= trace.reads.length * 0.5 * 0.999, 'the reads\' CPU is counted')
})

test('costLoad testbed scales the CPU costs by costs.json\'s testbedLoad factors (requests by their own when fitted), adds its background CPU per read, and leaves the wall times', { timeout: 10_000 }, () => {
  assert.ok(measuredCosts().testbedLoad !== undefined, 'config/sim/costs.json has a testbedLoad')
  const rate = scenario('testbed-100m').testbedRate
  const load = testbedLoadOf({ testbedRate: rate })
  assert.ok(load !== undefined && load.factor > 0)
  // a rate fitted apart is that rate's load (config/sim/costs.json has one for 100mbit), else testbedLoad's own
  assert.equal(load, measuredCosts().testbedLoad?.byRate?.[rate as string] ?? measuredCosts().testbedLoad)
  assert.equal(testbedLoadOf({ testbedRate: 'no-such-rate' }), measuredCosts().testbedLoad)
  const quiet = costsOf({ costs: 'measured', costLoad: 'quiet' })
  const loaded = costsOf({ costs: 'measured', costLoad: 'testbed', testbedRate: rate })
  for (const k of CPU_COST_FIELDS) {
    const background = k === 'readCpuMs' ? load.backgroundCpuMsPerRead ?? 0 : 0
    const factor = k === 'requestSendCpuMs' || k === 'requestRecvCpuMs' ? load.requestFactor ?? load.factor : load.factor
    assert.ok(Math.abs(loaded[k] - (quiet[k] * factor + background)) < 1e-9, k)
  }
  for (const k of ['readWallMs', 'attachMs', 'instanceCreateMs', 'startupWallMs'] as const) assert.equal(loaded[k], quiet[k], k)
  assert.equal(scenario('testbed-1g').costLoad, 'testbed')
  assert.equal(scenario('uniform').costLoad, 'quiet')
})

test('central with centralTransfer reads: each agent moves the bytes its reads ask for (nbdkit, no cache), not whole blocks', { timeout: 60_000 }, () => {
  const perAgent = trace.readBytes.reduce((a, b) => a + b, 0)
  const csv = readFileSync(join(root, 'test/fixtures/debian12-boot.reads.csv'), 'utf8').trim().split('\n').slice(1)
  assert.equal(perAgent, csv.reduce((a, l) => a + Number(l.split(',')[2]), 0), 'the reads\' lengths, repeats included')
  assert.ok(perAgent >= trace.distinctBytes && perAgent < trace.blockCount * trace.blockSizeBytes)
  const sc = scenario('testbed-100m', { thinkTimeScale: 0 })
  assert.equal(sc.centralTransfer, 'reads')
  const r = runScenario({ scenario: sc, trace, agents: 8, seed: 1, systems: ['central'] }).systems.central
  assert.equal(r.originEgressBytes, 8 * perAgent)
  const originBoundMs = 8 * perAgent / 12_500 // 100 Mb/s = 12,500 bytes/ms
  assert.ok((r.completionMaxMs as number) >= originBoundMs * 0.999 && (r.completionMaxMs as number) < originBoundMs * 1.1, `central ${r.completionMaxMs} ms, origin-bound ${originBoundMs} ms`)
})

test('scenario files are validated with the field named', { timeout: 5000 }, () => {
  assert.throws(() => parseScenario({ name: 'x', agents: -1, profile: { kind: 'uniform', upMbps: 1, downMbps: 1, latencyMs: 0 } }),
    (err: unknown) => err instanceof ScenarioError && err.name === 'ScenarioError' && /agents/.test(err.message))
  assert.throws(() => loadScenario('no-such-scenario'), (err: unknown) => err instanceof ScenarioError)
})

test('CLI writes result.json with every field and the plots', { timeout: 120_000 }, () => {
  const out = mkdtempSync(join(tmpdir(), 'sim-'))
  try {
    execFileSync(process.execPath, ['--import', 'tsx', join(root, 'test/sim/cli.ts'), '--scenario', 'uniform-crash10', '--agents', '20', '--seed', '1', '--out', out],
      { cwd: root, stdio: 'pipe', timeout: 100_000 })
    const r = JSON.parse(readFileSync(join(out, 'result.json'), 'utf8'))
    assert.equal(typeof r.boundMs, 'number')
    for (const s of ['central', 'volt', 'vmthunderd']) {
      for (const f of ['completionMaxMs', 'completionMedianMs', 'originEgressBytes', 'maxDepth', 'maxFanout', 'healMs']) assert.ok(f in r.systems[s], `${s}.${f}`)
    }
    for (const f of ['completion-cdf.svg', 'origin-egress.svg', 'depth-histogram.svg', 'recovery.svg']) {
      assert.ok(existsSync(join(out, f)), f)
      assert.match(readFileSync(join(out, f), 'utf8'), /^<svg [^]*<\/svg>$/)
    }
  } finally { rmSync(out, { recursive: true, force: true }) }
})

test('vmthunderd advertises by the daemon\'s policy (src/p2p/advert-policy.ts): under one advert per heartbeat, at least the keep-alive', { timeout: 60_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform'), trace, agents: 40, seed: 1, systems: ['vmthunderd'] })
  const v = r.systems.vmthunderd
  assert.ok(v.adverts !== undefined)
  const perAgentPerS = v.adverts.published / 41 / (v.simEndMs / 1000)
  // publishing on every heartbeat (1 s), as the simulator once did, gives at least 1
  assert.ok(perAgentPerS < 0.8, `adverts per agent per second ${perAgentPerS}`)
  assert.ok(perAgentPerS >= 1 / 5, `adverts per agent per second ${perAgentPerS}: below the 5 s keep-alive`)
})

test('a 1,000-agent wave back to back: no relay keeps a crowd of sole children, so the slowest agent is near the median', { timeout: 180_000 }, () => {
  // A relay's uplink sends about one copy of the boot per child that hangs on it alone (they read in step). With
  // relays refusing every agent that attaches from nothing once at their bound of sole children, counted by what
  // the children report they have (topology/admit.ts), the 1k wave is 1.75 s slowest, 1.74 s median (network
  // only, seed 1); with the bound applied to one-parent asks only, 3.50 s against 1.77 s (test/sim/README.md).
  const r = runScenario({ scenario: scenario('uniform-b2b-nocost'), trace, agents: 1000, seed: 1, systems: ['vmthunderd'] }).systems.vmthunderd
  assert.equal(r.unfinished, 0)
  assert.equal(r.checks.cycles, 0)
  const max = r.completionMaxMs as number; const median = r.completionMedianMs as number
  assert.ok(max < 1.2 * median, `slowest ${max.toFixed(0)} ms against median ${median.toFixed(0)} ms`)
})
