// sim:testbed's two halves: recording bench:testbed runs as the measured rows, and a row whose image was booted
// before (--vmt-profile) running the daemon's read-ahead model for vmthunderd alone.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { recordMeasured, testbedTable } from './testbed.js'
import { loadTrace } from './trace.js'

const root = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..')
const MiB = 2 ** 20

/** A bench:testbed results.json as the benchmark writes it, with only the fields the recorder reads. */
function run (o: { rate: string, think?: boolean, vmtProfile?: boolean, vmtMs: number, nbdkitMs: number, requests: number, localThinkMs?: number }): any {
  const agents = Array.from({ length: 8 }, (_, i) => ({
    host: `h${i + 1}`, bytesFromOrigin: i === 0 ? 50 * MiB : 0, bytesFromPeers: i === 0 ? 0 : 50 * MiB, cpuMs: 1000 + i * 100, blockRequests: { requests: o.requests / 8 }
  }))
  return {
    hosts: 8, rate: o.rate, think: o.think ?? false, vmtProfile: o.vmtProfile ?? false, warmUp: false, staggerMs: 0, localThinkMs: o.localThinkMs,
    systems: { vmthunderd: { maxMs: o.vmtMs, originBytes: 51 * MiB, agents }, nbdkit: { maxMs: o.nbdkitMs } }
  }
}

test('--record: each run goes to its row by rate, think times and --vmt-profile; runs of a row give its ranges', () => {
  const out = recordMeasured([
    { path: 'a', results: run({ rate: '1gbit', vmtMs: 13_530, nbdkitMs: 3_530, requests: 3_822 }) },
    { path: 'b', results: run({ rate: '1gbit', vmtMs: 13_710, nbdkitMs: 3_470, requests: 3_459 }) },
    { path: 'c', results: run({ rate: '1gbit', vmtProfile: true, vmtMs: 10_320, nbdkitMs: 3_410, requests: 613 }) },
    { path: 'd', results: run({ rate: '100mbit', think: true, vmtMs: 52_000, nbdkitMs: 52_010, requests: 4_400, localThinkMs: 51_510 }) }
  ], 'test')
  assert.deepEqual(out.rows.map(r => r.name), ['1 Gb/s back to back, slowest host', '1 Gb/s back to back, booted before (--vmt-profile)', '100 Mb/s think times, s added over local'])
  const [first, profile, think] = out.rows
  assert.deepEqual(first.measuredS, { central: [3.47, 3.53], vmthunderd: [13.53, 13.71] })
  assert.deepEqual(first.vmthunderd?.peerBlockRequests, [3_459, 3_822])
  assert.deepEqual(first.vmthunderd?.cpuSPerHost, [1.35, 1.35], 'the mean over the 8 hosts')
  assert.deepEqual(first.vmthunderd?.receivedMiBPerHost, [50, 50])
  assert.equal(first.prefetch, undefined)
  assert.deepEqual(profile.prefetch, { backToBack: true, idle: false })
  assert.equal(profile.scenario, 'testbed-1g')
  // think times: seconds added over the run's own local replay
  assert.deepEqual(think.measuredS, { central: [0.5, 0.5], vmthunderd: [0.49, 0.49] })
  assert.equal(out.localReplayS, 51.51)
})

test('--record refuses a run it has no row for, and one without nbdkit beside vmthunderd', () => {
  assert.throws(() => recordMeasured([{ path: 'x', results: run({ rate: '10gbit', vmtMs: 1, nbdkitMs: 1, requests: 1 }) }], 't'), { name: 'RecordError', message: /no testbed row for 8 hosts at 10gbit/ })
  const alone = run({ rate: '1gbit', vmtMs: 1, nbdkitMs: 1, requests: 1 })
  delete alone.systems.nbdkit
  assert.throws(() => recordMeasured([{ path: 'y', results: alone }], 't'), { name: 'RecordError', message: /vmthunderd and nbdkit/ })
})

test('the measured rows run: a booted-before row reads ahead in batches (far fewer requests than a first boot)', { timeout: 120_000 }, () => {
  const trace = loadTrace(join(root, 'test/fixtures/debian12-boot.reads.csv'))
  const rows = testbedTable(trace, [1])
  assert.ok(rows.length >= 3 && rows.every(r => Number.isFinite(r.predictedS) && r.predictedS >= 0), 'every row predicts a time (seconds added may be 0)')
  const vmt = (name: string): (typeof rows)[number] | undefined => rows.find(r => r.system === 'vmthunderd' && r.name === name)
  const first = vmt('1 Gb/s back to back, slowest host')
  const before = vmt('1 Gb/s back to back, booted before (--vmt-profile)')
  assert.ok(first !== undefined && before !== undefined, 'config/sim/testbed-measured.json has both 1 Gb/s rows')
  assert.ok(before.detail.predicted.peerBlockRequests * 3 < first.detail.predicted.peerBlockRequests,
    `requests ${before.detail.predicted.peerBlockRequests} against ${first.detail.predicted.peerBlockRequests}`)
  // central does not read ahead: the same prediction in both rows
  const central = rows.filter(r => r.system === 'central' && r.name.startsWith('1 Gb/s'))
  assert.equal(central.length, 2)
  assert.equal(central[0].predictedS, central[1].predictedS)
})
