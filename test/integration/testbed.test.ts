// The multi-host testbed (scripts/testbed.sh) with 3 hosts: every link carries the tbf cap it should (upload,
// download and the origin's own cap), real TCP flows between namespaces arrive whole, and teardown leaves
// nothing behind. How close flows run to the caps is timing: `npm run bench:testbed-caps` prints those ratios.
import { test, before, after, type TestContext } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { testbedUp, testbedDown, testbedStatus, listNamespaces, linkCounters, measureThroughput, measureRtt, startEcho, startDelayForwarder, nsExec, TestbedError, type Testbed } from '../helpers/testbed.js'

const PREFIX = 'vmtbt' // not the default, so a benchmark testbed on the same machine is left alone
const RATE_BPS = 12_500_000 // 100mbit
const ORIGIN_RATE_BPS = 6_250_000 // 50mbit

let tb: Testbed | undefined
const rootLinks = (): string => execFileSync('ip', ['-o', 'link', 'show']).toString().replace(/\d+: /g, '').split('\n').map((l) => l.split(':')[0]).sort().join(',')
let rootLinksBefore = ''

before(async () => {
  await testbedDown(PREFIX)
  rootLinksBefore = rootLinks()
})

after(async () => {
  await testbedDown(PREFIX)
})

/** The root qdisc of `dev` in `ns` is a tbf at `rateBytesPerSec` (what shapes the flow, read from the kernel). */
async function assertCap (ns: string, dev: string, rateBytesPerSec: number): Promise<void> {
  const { stdout } = await nsExec(ns, 'tc', ['-j', 'qdisc', 'show', 'dev', dev])
  const root = (JSON.parse(stdout) as Array<{ kind: string, root?: boolean, options?: { rate?: number } }>).find(q => q.root === true)
  assert.equal(root?.kind, 'tbf', `${ns} ${dev}: ${stdout}`)
  assert.equal(root?.options?.rate, rateBytesPerSec, `${ns} ${dev}: ${stdout}`)
}

function report (t: TestContext, what: string, bytesPerSec: number, cap: number): void {
  t.diagnostic(`${what}: ${(bytesPerSec * 8 / 1e6).toFixed(1)} Mbit/s (${(bytesPerSec / cap * 100).toFixed(0)} % of the cap; not asserted)`)
}

test('testbed comes up with 3 hosts and an origin, each in its own namespace', { timeout: 60_000 }, async () => {
  tb = await testbedUp({ hosts: 3, rate: '100mbit', originRate: '50mbit', prefix: PREFIX })
  assert.equal(tb.hosts.length, 3)
  assert.deepEqual((await listNamespaces(PREFIX)).sort(), [`${PREFIX}-br`, `${PREFIX}-h1`, `${PREFIX}-h2`, `${PREFIX}-h3`, `${PREFIX}-origin`])
  assert.equal(rootLinks(), rootLinksBefore, 'the root namespace got no new link')
  assert.equal((await testbedStatus(PREFIX))?.hosts[2]?.ip, tb.hosts[2].ip)
  await assert.rejects(testbedUp({ hosts: 1, prefix: PREFIX }), (err: Error) => err instanceof TestbedError && /up already/.test(err.message))
})

test('a host-to-host flow goes through both 100 Mbit caps and arrives whole', { timeout: 90_000 }, async (t) => {
  assert.ok(tb !== undefined)
  await assertCap(tb.hosts[0].ns, 'eth0', RATE_BPS)
  await assertCap(tb.bridgeNs, tb.hosts[1].brDev, RATE_BPS)
  const r = await measureThroughput({ from: [tb.hosts[0]], to: tb.hosts[1], bytesPerSender: 2.5 * RATE_BPS })
  assert.equal(r.bytes, 2.5 * RATE_BPS)
  report(t, 'h1 -> h2', r.bytesPerSec, RATE_BPS)
})

test('the origin has its own cap (50 Mbit) and its counters see the bytes', { timeout: 90_000 }, async (t) => {
  assert.ok(tb !== undefined)
  const before = await linkCounters(tb.origin.ns)
  await assertCap(tb.origin.ns, 'eth0', ORIGIN_RATE_BPS)
  const r = await measureThroughput({ from: [tb.origin], to: tb.hosts[2], bytesPerSender: 2 * ORIGIN_RATE_BPS })
  const afterC = await linkCounters(tb.origin.ns)
  assert.equal(r.bytes, 2 * ORIGIN_RATE_BPS)
  report(t, 'origin -> h3', r.bytesPerSec, ORIGIN_RATE_BPS)
  assert.ok(afterC.txBytes - before.txBytes >= r.bytes, 'origin eth0 tx counts at least the payload')
})

test('a host\'s download is capped: two senders into one host share its 100 Mbit', { timeout: 90_000 }, async (t) => {
  assert.ok(tb !== undefined)
  await assertCap(tb.bridgeNs, tb.hosts[1].brDev, RATE_BPS)
  const r = await measureThroughput({ from: [tb.hosts[0], tb.hosts[2]], to: tb.hosts[1], bytesPerSender: 1.5 * RATE_BPS })
  assert.equal(r.bytes, 3 * RATE_BPS)
  report(t, 'h1 + h3 -> h2', r.bytesPerSec, RATE_BPS)
})

test('the delay forwarder adds its delay to each direction and passes data through intact', { timeout: 90_000 }, async (t) => {
  assert.ok(tb !== undefined)
  const DELAY_MS = 20
  const echo = await startEcho(tb.hosts[1].ns, 7000)
  // The forwarder runs in h1, listening on h1's own address: h1 -> fwd (+20 ms) -> h2 echo (+20 ms) -> h1.
  const fwd = await startDelayForwarder({ ns: tb.hosts[0].ns, listen: `${tb.hosts[0].ip}:7001`, to: `${tb.hosts[1].ip}:7000`, delayMs: DELAY_MS })
  try {
    const direct = await measureRtt({ from: tb.hosts[0], ip: tb.hosts[1].ip, port: 7000, count: 10 })
    const delayed = await measureRtt({ from: tb.hosts[0], ip: tb.hosts[0].ip, port: 7001, count: 10 })
    // Timers never fire early: every delayed round trip takes at least two delays, however loaded the machine.
    // How much more it takes is timing (bench:testbed-caps prints it).
    t.diagnostic(`RTT direct median ${direct.medianMs.toFixed(2)} ms, through the ${DELAY_MS} ms forwarder median ${delayed.medianMs.toFixed(2)} ms`)
    assert.ok(delayed.minMs >= 2 * DELAY_MS, `min delayed RTT ${delayed.minMs} ms`)
    // Bulk data through a forwarder arrives whole (the receiver counts every byte).
    const bulk = await startDelayForwarder({ ns: tb.hosts[2].ns, listen: `${tb.hosts[2].ip}:7003`, to: `${tb.hosts[1].ip}:7002`, delayMs: 5 })
    try {
      const r = await measureThroughput({ from: [tb.hosts[2]], to: tb.hosts[1], bytesPerSender: 5_000_000, port: 7002, via: { ip: tb.hosts[2].ip, port: 7003 } })
      assert.equal(r.bytes, 5_000_000)
    } finally {
      await bulk.stop()
    }
  } finally {
    await fwd.stop()
    await echo.stop()
  }
})

test('an up that fails half-way tears down what it built', { timeout: 60_000 }, async () => {
  // An address the kernel refuses fails `up` after the bridge and origin namespaces exist.
  await assert.rejects(testbedUp({ hosts: 2, prefix: 'vmtbf', subnet: '999.1.1' }), { name: 'TestbedError' })
  assert.deepEqual(await listNamespaces('vmtbf'), [])
})

test('teardown leaves no namespace, veth or state behind, and is safe to repeat', { timeout: 60_000 }, async () => {
  assert.ok(tb !== undefined)
  await tb.down()
  assert.deepEqual(await listNamespaces(PREFIX), [])
  assert.equal(await testbedStatus(PREFIX), undefined)
  assert.equal(existsSync(`/run/vmthunder-testbed/${PREFIX}.json`), false)
  assert.equal(rootLinks(), rootLinksBefore)
  assert.equal(execFileSync('ip', ['-o', 'link', 'show', 'type', 'veth']).toString().trim(), '', 'no veth in the root namespace')
  await tb.down()
  assert.deepEqual(await listNamespaces(PREFIX), [])
})
