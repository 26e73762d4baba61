// CPU-seconds and resident memory of a process from /proc (Linux): honest figures on a shared, noisy machine,
// where wall time is not.

import { readFile } from 'node:fs/promises'

export interface ProcUsage {
  /** utime + stime, seconds. */
  cpuSeconds: number
  rssBytes: number
}

const CLOCK_TICKS_PER_SEC = 100

export async function procUsage (pid: number): Promise<ProcUsage> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  // The command name may hold spaces: fields are counted from after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const rssKiB = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN)
  return { cpuSeconds: ticks / CLOCK_TICKS_PER_SEC, rssBytes: rssKiB * 1024 }
}
