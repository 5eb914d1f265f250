/*
 * emmap-counter: read and update emmap counters files from the command line.
 *
 *   emmap-counter FILE get I               (`read' is the same)
 *   emmap-counter FILE inc I [K [TIMES]]   add K (default 1) TIMES times (default 1)
 *   emmap-counter FILE set I V
 *   emmap-counter FILE create N            create a file of N counters
 *
 * Prints the value read, or the previous value for inc/set (for inc with TIMES > 1,
 * the previous value of the last increment). Exit status: 0 ok, 1 usage, 2 file error.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "emmap_counters.h"

static int usage(void) {
    fprintf(stderr, "usage: emmap-counter FILE (get I | inc I [K [TIMES]] | set I V | create N)\n");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4) return usage();
    const char *file = argv[1], *cmd = argv[2];
    uint64_t arg = strtoull(argv[3], NULL, 10);
    emmap_counters c;
    int err = emmap_counters_open(&c, file, strcmp(cmd, "create") == 0 ? arg : 0);
    if (err) { fprintf(stderr, "emmap-counter: %s: %s\n", file, strerror(err)); return 2; }
    if (strcmp(cmd, "create") == 0) { printf("%" PRIu64 "\n", c.count); goto done; }
    if (arg >= c.count) { fprintf(stderr, "emmap-counter: index %" PRIu64 " >= %" PRIu64 "\n", arg, c.count); emmap_counters_close(&c); return 1; }
    if (strcmp(cmd, "get") == 0 || strcmp(cmd, "read") == 0) {
        printf("%" PRId64 "\n", emmap_counter_read(&c, arg));
    } else if (strcmp(cmd, "inc") == 0) {
        int64_t k = argc > 4 ? strtoll(argv[4], NULL, 10) : 1;
        long times = argc > 5 ? strtol(argv[5], NULL, 10) : 1;
        int64_t old = 0;
        for (long t = 0; t < times; t++) old = emmap_counter_add(&c, arg, k);
        printf("%" PRId64 "\n", old);
    } else if (strcmp(cmd, "set") == 0 && argc > 4) {
        printf("%" PRId64 "\n", emmap_counter_set(&c, arg, strtoll(argv[4], NULL, 10)));
    } else {
        emmap_counters_close(&c);
        return usage();
    }
done:
    emmap_counters_close(&c);
    return 0;
}
