/*
 * Test program for emmap_c_compat_tests: a C process counting in an emmap counters file
 * at the same time as the BEAM does.
 *
 *   counter_hammer FILE TIMES
 *
 * Waits (up to 20 s) until counter 0 of FILE is nonzero (the Erlang side's "go"), then
 * adds 1 to counter 1 TIMES times, yielding the CPU every 1000 additions so that the two
 * sides interleave. Prints how many of its additions saw a value someone else had changed
 * since its previous one (evidence that the two really ran at the same time).
 * Exit status: 0 ok, 2 file error, 3 no "go" within 20 s.
 */
#include <inttypes.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "emmap_counters.h"

int main(int argc, char **argv) {
    if (argc != 3) return 1;
    long times = strtol(argv[2], NULL, 10);
    emmap_counters c;
    if (emmap_counters_open(&c, argv[1], 0) != 0 || c.count < 2) return 2;
    time_t start = time(NULL);
    while (emmap_counter_read(&c, 0) == 0) {
        if (time(NULL) - start > 20) return 3;
        sched_yield();
    }
    long interleaved = 0;
    int64_t prev = emmap_counter_read(&c, 1) - 1;
    for (long i = 0; i < times; i++) {
        int64_t old = emmap_counter_add(&c, 1, 1);
        if (old != prev + 1) interleaved++;
        prev = old;
        if (i % 1000 == 999) sched_yield();
    }
    printf("%ld\n", interleaved);
    emmap_counters_close(&c);
    return 0;
}
