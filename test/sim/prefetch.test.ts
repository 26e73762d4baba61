// The simulator's prefetch variant (issue 5): the planner-driven model and complete agents promoted to seeds.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { makePrefetch, profileFromTrace } from './prefetch.js'
import { publicResult } from './report.js'
import { runScenario, runScenarioParallel, runSystem } from './run.js'
import type { RunResult } from './run.js'
import { loadScenario } from './scenario.js'
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
    assert.ok(s.completionMaxMs !== null && s.completionMaxMs >= trace.thinkTotalMs, `${where}: a boot shorter than its think time`)
  }
}

test('the profile learned from the trace is its first-touch order, every block once', { timeout: 30_000 }, () => {
  const p = profileFromTrace(trace)
  assert.equal(p.entries.length, trace.blockCount)
  // dense ids are handed out in first-touch order, so the learned order is 0, 1, 2, ...
  p.entries.forEach((e, i) => assert.equal(e.block, i))
  for (let i = 1; i < p.entries.length; i++) assert.ok(p.entries[i].tMs >= p.entries[i - 1].tMs)
  const m = makePrefetch(trace)
  assert.equal(m.params.initialWindowBlocks, 16, '1 MiB initial window at 64 KiB blocks')
})

test('uniform, 40 agents: prefetch is never slower, checkers clean, complete agents become seeds', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform'), trace, agents: 40, seed: 1, prefetchVariants: 'both' })
  assert.deepEqual(Object.keys(r.systems), ['central', 'central+prefetch', 'volt', 'volt+prefetch', 'vmthunderd', 'vmthunderd+prefetch'])
  assertClean(r, 'uniform')
  for (const sys of ['central', 'volt', 'vmthunderd']) {
    const off = r.systems[sys]; const on = r.systems[`${sys}+prefetch`]
    assert.ok((on.completionMaxMs as number) <= (off.completionMaxMs as number), `${sys}: max ${on.completionMaxMs} with prefetch > ${off.completionMaxMs} without`)
    assert.ok((on.completionMedianMs as number) <= (off.completionMedianMs as number), `${sys}: median slower with prefetch`)
  }
  // every agent ends holding the whole image: vmthunderd promotes each to a seed (no parents, depth 0)
  const { engine } = runSystem('vmthunderd', { scenario: scenario('uniform'), trace, agents: 40, seed: 1 }, true)
  const agents = engine.nodes.filter(n => !n.isSeed)
  assert.equal(agents.filter(n => n.promoted).length, 40)
  assert.ok(agents.every(n => engine.system.parentsOf(n).length === 0), 'promoted agents have left their parents')
  assert.deepEqual(engine.check.depthHistogram, [40], 'at the end every agent is a depth-0 seed')
})

test('prefetch variant: same seed, same result JSON (in process and in workers)', { timeout: 120_000 }, async () => {
  const o = { scenario: scenario('uniform-crash10'), trace, agents: 30, seed: 7, prefetchVariants: 'only' as const }
  const a = publicResult(runScenario(o))
  const b = publicResult(await runScenarioParallel(o))
  assert.deepEqual(b, a)
  assert.deepEqual(Object.keys((a as RunResult).systems), ['central+prefetch', 'volt+prefetch', 'vmthunderd+prefetch'])
})

test('prefetch variant with 10 % of agents crashing mid-boot: checkers clean, every survivor finishes', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform-crash10'), trace, agents: 60, seed: 3, systems: ['vmthunderd'], prefetchVariants: 'both' })
  assertClean(r, 'crash10')
  const on = r.systems['vmthunderd+prefetch']
  assert.equal(on.crashed, 6)
  assert.ok(on.healMs !== null, 'every live agent reached a seed again')
})

test('the scenario field `prefetch: true` runs both variants', { timeout: 120_000 }, () => {
  const r = runScenario({ scenario: scenario('uniform', { prefetch: true }), trace, agents: 10, seed: 2, systems: ['vmthunderd'] })
  assert.deepEqual(Object.keys(r.systems), ['vmthunderd', 'vmthunderd+prefetch'])
  assertClean(r, 'field')
})

test('backToBack: the daemon\'s read-ahead beside back-to-back reads, in batches of 16 blocks (the testbed\'s --vmt-profile)', { timeout: 120_000 }, () => {
  const base = { scenario: scenario('testbed-1g'), trace, agents: 8, seed: 1 }
  const first = runScenario({ ...base, systems: ['vmthunderd'] }).systems.vmthunderd
  const issue5 = runScenario({ ...base, systems: ['vmthunderd'], prefetchVariants: 'only' }).systems['vmthunderd+prefetch']
  const daemon = runScenario({ ...base, systems: ['vmthunderd'], prefetchVariants: 'only', prefetchConfig: { backToBack: true, idle: false } })
  const on = daemon.systems['vmthunderd+prefetch']
  // the checkers (assertClean's, but for its think-time floor: these reads come back to back)
  assert.deepEqual([on.checks.cycles, on.checks.fanoutViolations, on.checks.absentReads, on.checks.unreachableAtEnd, on.unfinished], [0, 0, 0, 0, 0])
  // issue 5's model waits for think time, so back to back it moves nothing (reads become events: within 1 %);
  // the daemon reads ahead anyway
  assert.equal(issue5.prefetchBlocks, 0)
  assert.ok(Math.abs((issue5.completionMaxMs as number) / (first.completionMaxMs as number) - 1) < 0.01)
  assert.ok(on.prefetchBlocks > 0, 'read-ahead issued blocks')
  // batches of up to 16 blocks, one request per source: requests fall several times over (the testbed:
  // 3,472-3,562 GETs on a first boot, 617-689 with the profile)
  assert.ok(on.requestsCharged * 3 < first.requestsCharged, `requests ${on.requestsCharged} against ${first.requestsCharged}`)
  // the same blocks: the profile is the trace's, so nothing beyond it is read ahead (hedges differ: within 2 %)
  assert.ok(Math.abs(on.perAgent.receivedBytes / first.perAgent.receivedBytes - 1) < 0.02, `${on.perAgent.receivedBytes} against ${first.perAgent.receivedBytes} bytes per agent`)
})
