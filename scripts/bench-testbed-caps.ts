// How close real TCP flows run to the testbed's tbf caps, and what the delay forwarder adds: the timing that
// test/integration/testbed.test.ts does not assert. Brings up its own 3-host testbed (prefix vmtbc), prints
// each flow's rate as a ratio to its cap and to an unshaped flow measured in the same run, and tears it down.
//   npm run bench:testbed-caps
// A working cap lands near 1.0x of its rate; an unshaped veth runs at many times the cap.

import { testbedUp, testbedDown, measureThroughput, measureRtt, startEcho, startDelayForwarder, nsExec } from '../test/helpers/testbed.js'

const PREFIX = 'vmtbc'
const RATE_BPS = 12_500_000
const ORIGIN_RATE_BPS = 6_250_000
const DELAY_MS = 20
const say = (line: string): void => { process.stdout.write(line + '\n') }
const mbit = (bytesPerSec: number): string => (bytesPerSec * 8 / 1e6).toFixed(1).padStart(7)

await testbedDown(PREFIX)
const tb = await testbedUp({ hosts: 3, prefix: PREFIX, rate: '100mbit', originRate: '50mbit' })
try {
  const flows = [
    { what: 'h1 -> h2 (100 Mbit caps)', cap: RATE_BPS, run: async () => await measureThroughput({ from: [tb.hosts[0]], to: tb.hosts[1], bytesPerSender: 2.5 * RATE_BPS }) },
    { what: 'origin -> h3 (50 Mbit cap)', cap: ORIGIN_RATE_BPS, run: async () => await measureThroughput({ from: [tb.origin], to: tb.hosts[2], bytesPerSender: 2 * ORIGIN_RATE_BPS }) },
    { what: 'h1 + h3 -> h2 (one download cap)', cap: RATE_BPS, run: async () => await measureThroughput({ from: [tb.hosts[0], tb.hosts[2]], to: tb.hosts[1], bytesPerSender: 1.5 * RATE_BPS }) }
  ]
  const results = []
  for (const f of flows) {
    const r = await f.run()
    results.push({ ...f, bytesPerSec: r.bytesPerSec })
  }
  // Baseline in the same run: the same h1 -> h2 flow with both caps removed.
  await nsExec(tb.hosts[0].ns, 'tc', ['qdisc', 'del', 'dev', 'eth0', 'root'])
  await nsExec(tb.bridgeNs, 'tc', ['qdisc', 'del', 'dev', tb.hosts[1].brDev, 'root'])
  const unshaped = await measureThroughput({ from: [tb.hosts[0]], to: tb.hosts[1], bytesPerSender: 10 * RATE_BPS })
  say(`flow                               Mbit/s   x cap   x unshaped`)
  for (const r of results) say(`${r.what.padEnd(34)} ${mbit(r.bytesPerSec)}  ${(r.bytesPerSec / r.cap).toFixed(2).padStart(6)}   ${(r.bytesPerSec / unshaped.bytesPerSec).toFixed(3).padStart(8)}`)
  say(`${'h1 -> h2 unshaped (baseline)'.padEnd(34)} ${mbit(unshaped.bytesPerSec)}`)
  const echo = await startEcho(tb.hosts[1].ns, 7000)
  const fwd = await startDelayForwarder({ ns: tb.hosts[0].ns, listen: `${tb.hosts[0].ip}:7001`, to: `${tb.hosts[1].ip}:7000`, delayMs: DELAY_MS })
  try {
    const direct = await measureRtt({ from: tb.hosts[0], ip: tb.hosts[1].ip, port: 7000, count: 20 })
    const delayed = await measureRtt({ from: tb.hosts[0], ip: tb.hosts[0].ip, port: 7001, count: 20 })
    say(`RTT direct median ${direct.medianMs.toFixed(2)} ms; through a ${DELAY_MS} ms forwarder median ${delayed.medianMs.toFixed(2)} ms ` +
      `(extra over 2 x delay + direct: ${(delayed.medianMs - 2 * DELAY_MS - direct.medianMs).toFixed(2)} ms)`)
  } finally {
    await fwd.stop()
    await echo.stop()
  }
} finally {
  await testbedDown(PREFIX)
}
