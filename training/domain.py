"""The demo model's domain: what a voice assistant at home is asked, as a template grammar.

Eleven intents (smart home, timers, alarms, weather, music, shopping lists, reminders, calendar and dates,
calls and messages, numbers and arithmetic, short everyday sentences), optional politeness before and after,
numbers, times and dates always written in words. `python -m training.domain` writes DOMAIN.md: every rule
with its alternatives and the complete word list.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from training.grammar import Grammar, check, compile_grammar, expand_with_probability, finish, vocabulary

START = "utterance"


def _words(text: str) -> tuple[str, ...]:
    """A word list written one item per line (items may be several words)."""
    return tuple(line.strip() for line in text.strip().splitlines() if line.strip())


GRAMMAR: Grammar = {
    "utterance": ("{home}", "{timer}", "{alarm}", "{weather}", "{music}", "{shopping}", "{reminder}",
                  "{calendar}", "{contact}", "{math}", "{everyday}"),

    # --- politeness --------------------------------------------------------------------------------------
    "command_start": ("", "", "", "", "please ", "hey, ", "okay, ", "now ", "hey there, ", "alright, "),
    "command_end": ("", "", "", "", ", please", ", thanks", ", thank you", " now", " right now", " for me",
                    ", thank you very much"),
    "request_start": ("can you", "could you", "would you", "can you please", "could you please",
                      "would you please", "will you", "hey, can you", "okay, could you"),
    "request_end": ("", "", "", " please", " for me", " right now"),
    "question_start": ("", "", "", "", "hey, ", "okay, ", "excuse me, ", "quick question, ", "so "),

    # --- numbers, times and dates (always words) ---------------------------------------------------------
    "digit": _words("one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine"),
    "teen": _words("ten\neleven\ntwelve\nthirteen\nfourteen\nfifteen\nsixteen\nseventeen\neighteen\nnineteen"),
    "tens": _words("twenty\nthirty\nforty\nfifty\nsixty\nseventy\neighty\nninety"),
    "number_1_99": ("{digit}", "{teen}", "{tens}", "{tens} {digit}"),
    "number": ("{number_1_99}", "{number_1_99}", "{digit} hundred", "{digit} hundred and {number_1_99}",
               "a hundred", "one thousand", "{digit} thousand", "{digit} thousand {digit} hundred", "zero",
               "a million", "{number_1_99} thousand"),
    "count": _words("two\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\ntwelve\nfifteen\ntwenty\n"
                    "twenty five\nthirty\nforty\nforty five\nfifty\nninety"),
    "small_count": _words("two\nthree\nfour\nfive\nsix"),
    "percent": ("ten", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
                "one hundred", "{tens} five", "five"),
    "hour": _words("one\ntwo\nthree\nfour\nfive\nsix\nseven\neight\nnine\nten\neleven\ntwelve"),
    "clock_minute": ("oh {digit}", "{teen}", "twenty", "thirty", "forty", "fifty", "{clock_tens} {digit}"),
    "clock_tens": _words("twenty\nthirty\nforty\nfifty"),
    "past_minutes": _words("five\nten\ntwenty\ntwenty five"),
    "daypart": _words("morning\nafternoon\nevening\nnight"),
    "time_of_day": ("in the morning", "in the afternoon", "in the evening", "at night"),
    "time": ("{hour} o'clock", "{hour} {clock_minute}", "{hour} {clock_minute}", "half past {hour}",
             "quarter past {hour}", "quarter to {hour}", "{past_minutes} past {hour}", "{past_minutes} to {hour}",
             "noon", "midnight", "{hour} {clock_minute} {time_of_day}", "{hour} o'clock {time_of_day}",
             "{hour} {time_of_day}"),
    "weekday": _words("Monday\nTuesday\nWednesday\nThursday\nFriday\nSaturday\nSunday"),
    "month": _words("January\nFebruary\nMarch\nApril\nMay\nJune\nJuly\nAugust\nSeptember\nOctober\nNovember\n"
                    "December"),
    "ordinal": ("{ordinal_1_19}", "{ordinal_1_19}", "twentieth", "twenty {ordinal_digit}", "thirtieth",
                "thirty first"),
    "ordinal_digit": _words("first\nsecond\nthird\nfourth\nfifth\nsixth\nseventh\neighth\nninth"),
    "ordinal_1_19": ("{ordinal_digit}", "tenth", "eleventh", "twelfth", "thirteenth", "fourteenth",
                     "fifteenth", "sixteenth", "seventeenth", "eighteenth", "nineteenth"),
    "date": ("the {ordinal} of {month}", "{month} {ordinal}", "{weekday} the {ordinal}",
             "{weekday} the {ordinal} of {month}"),
    "day": ("today", "tomorrow", "tonight", "this morning", "this afternoon", "this evening", "tomorrow morning",
            "tomorrow evening", "on {weekday}", "next {weekday}", "this {weekday}", "on {weekday} {daypart}",
            "on the {ordinal}", "on {date}", "on {date}", "this weekend", "next week", "the day after tomorrow"),
    "day_name": ("tomorrow", "{weekday}", "next {weekday}", "{date}", "the {ordinal}", "next week",
                 "the weekend", "{weekday} {daypart}"),
    "past_day": ("today", "yesterday", "this morning", "last night", "last week", "on {weekday}",
                 "yesterday evening"),
    "duration": ("{count} minutes", "one minute", "{count} seconds", "{count} hours", "an hour", "half an hour",
                 "an hour and a half", "{small_count} hours and {count} minutes", "a minute and a half",
                 "{number_1_99} minutes", "one hour and {count} minutes"),

    # --- smart home ---------------------------------------------------------------------------------------
    "home": ("{command_start}{home_action}{command_end}", "{command_start}{home_action}{command_end}",
             "{request_start} {home_action}{request_end}?", "{question_start}{home_question}"),
    "home_action": ("turn {on_off} the {device}{in_room}", "turn the {device} {on_off}{in_room}",
                    "switch {on_off} the {device}{in_room}", "switch the {device} {on_off}{in_room}",
                    "{dim} the {light}{in_room}", "set the {light}{in_room} to {percent} percent",
                    "set the {light}{in_room} to {light_color}", "make the {light}{in_room} {light_color}",
                    "set the {thermostat} to {number_1_99} degrees", "turn the {thermostat} {up_down}",
                    "make it {warmer}{in_room}", "{open_close} the {openable}{in_room}",
                    "{lock} the {door}", "start the {appliance}", "stop the {appliance}",
                    "run the {appliance} at {time}", "turn {on_off} all the lights", "turn everything off",
                    "turn {on_off} the {device} at {time}", "set the fan to {fan_speed}",
                    "start the {appliance} in {duration}", "activate {home_mode} mode",
                    "switch to {home_mode} mode", "turn {on_off} the {device} in {duration}"),
    "home_question": ("is the {door} locked?", "are the lights on in the {room}?", "is the {device} still on?",
                      "what is the temperature{in_room}?", "did I leave the {device} on?",
                      "is the {openable} open?", "how long has the {appliance} been running?",
                      "when will the {appliance} be done?", "who is at the front door?",
                      "is anyone in the {room}?", "how much energy did we use {past_day}?"),
    "on_off": ("on", "off"),
    "up_down": ("up", "down"),
    "warmer": ("warmer", "cooler", "brighter", "darker", "a bit warmer", "a little cooler"),
    "dim": ("dim", "brighten"),
    "lock": ("lock", "unlock"),
    "open_close": ("open", "close"),
    "fan_speed": ("low", "medium", "high", "the lowest setting", "the highest setting"),
    "home_mode": _words("night\naway\nvacation\nmovie\nsleep\nparty\neco\nguest"),
    "light_color": _words("red\nblue\ngreen\nyellow\npurple\norange\npink\nwhite\nwarm white\ncool white"),
    "in_room": ("", "", " in the {room}", " in the {room}", " in the {room}", " upstairs", " downstairs",
                " in every room"),
    "room": _words("kitchen\nliving room\nbedroom\nbathroom\nhallway\noffice\ngarage\ngarden\nbasement\nattic\n"
                   "dining room\nguest room\nlaundry room\nnursery\nstudy\nporch\nbalcony\nplayroom\n"
                   "master bedroom\nkids room\nback yard\nentrance\nliving area\nstaircase"),
    "device": ("{light}", "{light}", "{gadget}", "{appliance}"),
    "light": _words("lights\nlamp\nceiling light\nfloor lamp\ndesk lamp\nnight light\nporch light\n"
                    "garden lights\nreading light\nkitchen lights\nfairy lights\nlight strip"),
    "gadget": _words("fan\nheater\nair conditioner\ntelevision\nTV\nradio\nspeaker\nhumidifier\nfireplace\n"
                     "alarm system\nsecurity camera\nprinter\ncomputer\nelectric blanket\nair purifier\n"
                     "sprinklers\nhot tub\nwater heater\ntowel rail\nsound bar"),
    "appliance": _words("dishwasher\nwashing machine\ndryer\ncoffee machine\nkettle\noven\nrobot vacuum\n"
                        "vacuum cleaner\nmicrowave\nrice cooker\nbread maker\nslow cooker\nlawn mower\n"
                        "pool pump"),
    "thermostat": ("thermostat", "heating", "air conditioning", "temperature{in_room}"),
    "openable": _words("window\nwindows\nblinds\ncurtains\nshutters\ngarage door\ngate\nskylight\nshades\n"
                       "front gate\nroof window"),
    "door": _words("front door\nback door\ngarage door\nside door\npatio door\nbasement door\nshed"),

    # --- timers and alarms --------------------------------------------------------------------------------
    "timer": ("{command_start}{timer_action}{command_end}", "{command_start}{timer_action}{command_end}",
              "{request_start} {timer_action}{request_end}?", "{question_start}{timer_question}"),
    "timer_action": ("set a timer for {duration}", "set a timer for {duration}", "start a timer for {duration}",
                     "set a timer for {duration} for the {food}", "time the {food} for {duration}",
                     "start a {count} minute timer", "set a {count} minute timer for the {food}",
                     "cancel the {food} timer", "cancel my timer", "cancel all timers", "pause the timer",
                     "resume the timer", "stop the timer", "add {duration} to the timer",
                     "add {duration} to the {food} timer", "restart the timer", "start the stopwatch",
                     "stop the stopwatch", "name this timer {food}"),
    "timer_question": ("how much time is left on my timer?", "how much time is left on the {food} timer?",
                       "how long until the {food} is ready?", "what timers do I have?",
                       "is my timer still running?"),
    "food": _words("pasta\nrice\neggs\npizza\ncake\nbread\ntea\ncookies\npotatoes\nchicken\nsoup\nlaundry\n"
                   "roast\nvegetables\ncoffee\nmuffins\nsteak\nnoodles\nfish\npie\nbrownies\nlasagna\n"
                   "popcorn\noatmeal"),
    "alarm": ("{command_start}{alarm_action}{command_end}", "{command_start}{alarm_action}{command_end}",
              "{request_start} {alarm_action}{request_end}?", "{question_start}{alarm_question}"),
    "alarm_action": ("wake me up at {time}{alarm_day}", "set an alarm for {time}{alarm_day}",
                     "set my alarm for {time}{alarm_day}", "set an alarm at {time} called {alarm_label}",
                     "cancel my alarm{alarm_day}", "cancel the {time} alarm", "turn off all my alarms",
                     "snooze the alarm for {count} minutes", "snooze for {count} minutes",
                     "move my alarm to {time}", "change my {time} alarm to {time}", "delete all alarms",
                     "wake me up in {duration}", "set a {alarm_sound} alarm for {time}",
                     "stop the alarm", "turn the alarm off"),
    "alarm_question": ("what time is my alarm set for {alarm_target}?", "do I have an alarm set for {alarm_target}?",
                       "when is my next alarm?", "how many alarms do I have?",
                       "is my alarm on for {time}?"),
    "alarm_day": ("", "", " tomorrow", " tomorrow morning", " on {weekday}", " on {weekday}", " every weekday",
                  " every {weekday}", " on weekends", " every day", " for {date}"),
    "alarm_target": ("tomorrow", "tomorrow morning", "{weekday}", "the weekend", "{date}", "tonight"),
    "alarm_label": _words("work\ngym\nschool\nmedicine\nmeeting\nwake up\nbreakfast\nyoga\nflight\nbus"),
    "alarm_sound": _words("gentle\nloud\nquiet\nmusic\nbirdsong\nvibrating"),

    # --- weather ------------------------------------------------------------------------------------------
    "weather": ("{question_start}{weather_question}", "{question_start}{weather_question}",
                "{command_start}{weather_action}{command_end}"),
    "weather_question": ("what is the weather like in {city}{weather_when}?", "what is the weather{weather_when}?",
                         "what is the forecast for {city}{weather_when}?", "will it {precip} in {city}{weather_when}?",
                         "is it going to {precip}{weather_when}?", "is it going to be {condition} in {city}"
                         "{weather_when}?", "how {temp_adj} will it be in {city}{weather_when}?",
                         "what is the temperature in {city} right now?", "what is the temperature outside?",
                         "do I need an umbrella{weather_when}?", "do I need a {clothing}{weather_when}?",
                         "what time is sunrise in {city}{weather_when}?", "what time is sunset{weather_when}?",
                         "how windy is it in {city}?", "what is the humidity in {city}{weather_when}?",
                         "will there be a {storm} in {city}{weather_when}?", "is it {condition} in {city}?",
                         "what will the high be{weather_when}?", "how cold does it get in {city} at night?",
                         "when will the {precip_noun} stop?", "what is the air quality in {city}{weather_when}?",
                         "is it {condition} outside?", "should I take a {clothing}{weather_when}?"),
    "weather_action": ("tell me the weather in {city}{weather_when}", "give me the forecast for {city}",
                       "show me the weather for {weather_span}", "check the weather in {city}",
                       "tell me the forecast for {weather_span}", "add {city} to my weather cities",
                       "warn me if it is going to {precip}{weather_when}"),
    "weather_when": ("", "", " today", " tomorrow", " tonight", " this weekend", " on {weekday}", " next week",
                     " this afternoon", " tomorrow morning", " on {weekday} {daypart}", " later", " in the morning",
                     " this evening", " on {date}"),
    "weather_span": ("today", "tomorrow", "the weekend", "the next few days", "next week", "{weekday}",
                     "the whole week", "this evening"),
    "precip": ("rain", "snow", "hail", "freeze", "be sunny", "be windy", "clear up", "get warmer", "get colder"),
    "precip_noun": ("rain", "snow", "storm", "wind", "fog", "heat wave"),
    "condition": _words("sunny\ncloudy\nwindy\nfoggy\nrainy\nsnowy\nhot\ncold\nwarm\nchilly\nhumid\nstormy\n"
                        "clear\nfreezing\nmild\ndry\nwet\nicy"),
    "temp_adj": ("hot", "cold", "warm", "chilly", "windy", "humid"),
    "storm": ("storm", "thunderstorm", "snowstorm", "heat wave", "hurricane", "frost"),
    "clothing": _words("jacket\ncoat\nsweater\nscarf\nhat\nraincoat\nsunscreen\npair of gloves"),
    "city": _words("Paris\nLondon\nBerlin\nTokyo\nMadrid\nRome\nVienna\nPrague\nDublin\nLisbon\nAmsterdam\n"
                   "Brussels\nOslo\nStockholm\nHelsinki\nCopenhagen\nWarsaw\nAthens\nIstanbul\nCairo\nNairobi\n"
                   "Dubai\nMumbai\nDelhi\nBangkok\nSingapore\nSeoul\nBeijing\nShanghai\nSydney\nMelbourne\n"
                   "Auckland\nToronto\nMontreal\nVancouver\nChicago\nBoston\nSeattle\nDenver\nDallas\nHouston\n"
                   "Miami\nAtlanta\nPhoenix\nPortland\nNew York\nLos Angeles\nSan Francisco\nMexico City\nLima\n"
                   "Santiago\nBuenos Aires\nMoscow\nZurich\nGeneva\nMunich\nHamburg\nMilan\nBarcelona\n"
                   "Edinburgh\nManchester\nVenice\nFlorence\nNaples\nBudapest\nCape Town\nHong Kong\nOttawa\n"
                   "Las Vegas\nWashington"),

    # --- music --------------------------------------------------------------------------------------------
    "music": ("{command_start}{music_action}{command_end}", "{command_start}{music_action}{command_end}",
              "{request_start} {music_action}{request_end}?", "{question_start}{music_question}"),
    "music_action": ("play {music_item}{in_room}", "play {music_item}{in_room}", "put on {music_item}{in_room}",
                     "play {music_item} on the {speaker}", "skip this song", "play the next song",
                     "play the previous song", "go back to the last song", "pause the music", "resume the music",
                     "stop the music", "turn the volume {up_down}", "turn it {up_down}{in_room}",
                     "turn the music {up_down} a little", "set the volume to {volume_level}",
                     "mute the {speaker}", "shuffle my {playlist} playlist", "repeat this song",
                     "add this song to my {playlist} playlist", "play this song again", "play music everywhere",
                     "stop the music in {duration}", "play {music_item} for {duration}", "like this song",
                     "skip ahead {count} seconds", "go back {count} seconds", "make a new playlist called "
                     "{playlist}", "play the album again from the start"),
    "music_question": ("what song is this?", "who sings this song?", "what album is this from?",
                       "how long is this song?", "what is playing in the {room}?", "what was the last song?",
                       "what is the volume set to?", "can you play something {mood}?"),
    "music_item": ("some {genre}", "some {genre}", "{genre} music", "{mood} {genre}", "{mood} music",
                   "my {playlist} playlist", "the {playlist} playlist", "music from the {decade}",
                   "songs from the {decade}", "{sounds} sounds", "the radio", "the news", "my podcast",
                   "the latest episode of my podcast", "white noise", "lullabies", "Christmas songs",
                   "my favorite songs", "something {mood}", "the top hits", "an audio book"),
    "genre": _words("jazz\nrock\nblues\npop\ncountry\nreggae\nhip hop\nfolk\nsoul\ndisco\nopera\nfunk\ntechno\n"
                    "salsa\ngospel\npunk\nclassical\nelectronic\nambient\nheavy metal\nrock and roll\nswing\n"
                    "piano\nguitar\nlatin\nrap\nindie"),
    "mood": _words("relaxing\nquiet\nupbeat\nhappy\ncalm\nloud\nold\nnew\nsad\nromantic\nenergetic\npeaceful\n"
                   "cheerful\nslow\nfast"),
    "decade": _words("fifties\nsixties\nseventies\neighties\nnineties"),
    "sounds": _words("rain\nocean\nforest\nthunderstorm\nwind\nriver\nbird\nfire"),
    "playlist": _words("workout\nmorning\nrunning\ndinner\nparty\nroad trip\nstudy\nsleep\nfocus\nsummer\nchill\n"
                       "favorite\nweekend\ncooking\ndriving\nwedding\nholiday"),
    "speaker": ("speaker", "{room} speaker", "television", "sound bar", "headphones"),
    "volume_level": ("{digit}", "ten", "{percent} percent", "half", "maximum", "minimum", "level {digit}"),

    # --- shopping lists -----------------------------------------------------------------------------------
    "shopping": ("{command_start}{shopping_action}{command_end}", "{command_start}{shopping_action}{command_end}",
                 "{request_start} {shopping_action}{request_end}?", "{question_start}{shopping_question}",
                 "{shopping_statement}"),
    "shopping_action": ("add {grocery_phrase} to my shopping list", "add {grocery_phrase} to the shopping list",
                        "add {grocery_phrase} and {grocery_phrase} to my shopping list",
                        "add {grocery}, {grocery} and {grocery} to the list",
                        "put {grocery_phrase} on my {list_name} list", "put {grocery_phrase} on the list",
                        "remove {grocery} from my shopping list", "take {grocery} off the list",
                        "clear my shopping list", "read my shopping list", "read me the {list_name} list",
                        "order {grocery_phrase} online", "send my shopping list to {contact_person}",
                        "start a new {list_name} list", "mark {grocery} as bought"),
    "shopping_question": ("what is on my shopping list?", "what is on my {list_name} list?",
                          "do we need {grocery}?", "is {grocery} on my list?", "did I add {grocery} to the list?",
                          "how many items are on my shopping list?", "do we have any {grocery} left?",
                          "where can I buy {grocery}?", "how much do {grocery} cost?"),
    "shopping_statement": ("we are out of {grocery}", "I need to buy {grocery_phrase}",
                           "we need {grocery_phrase}", "do not forget the {grocery}",
                           "I need {grocery_phrase} for {food}", "we are running low on {grocery}"),
    "grocery_phrase": ("{grocery}", "{grocery}", "some {grocery}", "more {grocery}", "{container} of {grocery}",
                       "{small_count} {containers} of {grocery}", "a dozen eggs"),
    "container": ("a bag", "a box", "a pack", "a bottle", "a jar", "a can", "a carton", "a pound", "a kilo",
                  "a tin"),
    "containers": ("bags", "boxes", "packs", "bottles", "jars", "cans", "cartons", "pounds", "kilos"),
    "list_name": ("shopping", "grocery", "hardware store", "pharmacy", "party", "weekend", "camping",
                  "to do", "packing", "Christmas"),
    "grocery": _words("milk\neggs\nbread\nbutter\ncheese\napples\nbananas\noranges\ntomatoes\nonions\ngarlic\n"
                      "potatoes\ncarrots\nrice\npasta\nflour\nsugar\nsalt\npepper\ncoffee\ntea\norange juice\n"
                      "apple juice\nyogurt\nchicken\nbeef\nfish\nsalmon\ntuna\nham\nbacon\nsausages\nlettuce\n"
                      "spinach\ncucumbers\npeppers\nmushrooms\nlemons\nlimes\ngrapes\nstrawberries\nblueberries\n"
                      "peaches\npears\ncherries\nwatermelon\navocados\nbeans\npeas\ncorn\ncereal\noats\nhoney\njam\n"
                      "peanut butter\nolive oil\nvinegar\nketchup\nmustard\nmayonnaise\nsoap\nshampoo\n"
                      "toothpaste\ntoilet paper\npaper towels\nbatteries\nlight bulbs\ndish soap\n"
                      "laundry detergent\ntrash bags\nnapkins\ncookies\nchocolate\ncrackers\nchips\nnuts\n"
                      "almonds\npopcorn\nice cream\nwater\nsparkling water\nsoda\nwine\nbeer\ndiapers\ncat food\n"
                      "dog food\ncream\nsour cream\ntortillas\nbroccoli\ncabbage\ncelery\nzucchini\npumpkin\n"
                      "noodles\nsoy sauce\ncinnamon\nvanilla\nbaking soda\nyeast\nmint\nbasil\nparsley\n"
                      "tofu\nshrimp\nturkey\nlemonade\ncoconut milk\nmaple syrup\nfrozen pizza\ndog treats\n"
                      "sponges\naluminum foil\nplastic wrap\nhand cream\ndental floss\ncandles\nmatches"),

    # --- reminders ----------------------------------------------------------------------------------------
    "reminder": ("{command_start}{reminder_action}{command_end}", "{command_start}{reminder_action}{command_end}",
                 "{request_start} {reminder_action}{request_end}?", "{question_start}{reminder_question}"),
    "reminder_action": ("remind me to {task} {remind_when}", "remind me to {task} {remind_when}",
                        "remind me {remind_when} to {task}", "set a reminder to {task} {remind_when}",
                        "create a reminder to {task}", "do not let me forget to {task} {remind_when}",
                        "remind me about the {event} {remind_when}", "delete my reminder to {task}",
                        "cancel the reminder about the {event}", "move my reminder to {time}",
                        "move my reminder to {day_name}",
                        "remind me to {task}", "add a reminder for the {event} {day}",
                        "remind me every {weekday} to {task}", "make a note to {task}"),
    "reminder_question": ("what are my reminders {reminder_day}?", "do I have any reminders {reminder_day}?",
                          "what did I ask you to remind me about?", "when is my reminder to {task}?",
                          "did I set a reminder to {task}?"),
    "reminder_day": ("today", "tomorrow", "for today", "for tomorrow", "for {weekday}", "this week",
                     "for the weekend"),
    "remind_when": ("at {time}", "at {time}", "{day} at {time}", "at {time} {day}", "in {duration}", "{day}",
                    "{day}", "every {weekday}", "every day at {time}", "every morning", "every evening",
                    "when I get home", "when I leave work", "before I go to bed", "after lunch",
                    "on {date}", "next month", "at the end of the day", "tomorrow at {time}"),
    "task": ("call {contact_person}", "call {contact_person}", "pay the {bill}", "water the plants",
             "take out the trash", "feed the {pet}", "walk the dog", "take my medicine", "take my vitamins",
             "buy {grocery_phrase}", "pick up {contact_person} from the {place}", "pick up my {pickup}",
             "book a table at the restaurant", "send the report to {name}", "check the {check_item}",
             "clean the {room}", "do the laundry", "charge my phone", "renew my passport",
             "return the library books", "bring an umbrella", "wash the car", "change the bed sheets",
             "lock the {door}", "go to the gym", "drink some water", "study for the exam",
             "cancel my subscription", "order a pizza", "make an appointment with the {professional}",
             "send a birthday card to {contact_person}", "email {name} about the {event}",
             "stretch", "go for a run", "turn off the oven", "move the car", "print the tickets",
             "back up my computer", "fill up the car", "buy a present for {contact_person}",
             "reply to {name}", "put the bins out", "defrost the {food}", "book the flights to {city}",
             "cook dinner", "leave for the {place}", "update my calendar", "practice the {instrument}"),
    "bill": ("rent", "electricity bill", "phone bill", "water bill", "gas bill", "internet bill", "credit card",
             "insurance", "taxes"),
    "pet": ("cat", "dog", "fish", "birds", "rabbit", "hamster", "chickens"),
    "pickup": ("dry cleaning", "prescription", "package", "glasses", "car", "keys", "order", "photos"),
    "check_item": ("mail", "oven", "tire pressure", "smoke alarm", "bank account", "weather", "emails",
                   "oil", "garden"),
    "professional": ("doctor", "dentist", "hairdresser", "plumber", "electrician", "vet", "accountant",
                     "mechanic", "lawyer", "eye doctor"),
    "instrument": ("piano", "guitar", "violin", "drums", "flute", "trumpet", "cello"),

    # --- calendar and dates -------------------------------------------------------------------------------
    "calendar": ("{command_start}{calendar_action}{command_end}", "{command_start}{calendar_action}{command_end}",
                 "{request_start} {calendar_action}{request_end}?", "{question_start}{calendar_question}",
                 "{question_start}{calendar_question}"),
    "calendar_action": ("schedule a {event} with {name} {day} at {time}", "add a {event} to my calendar {day}",
                        "add the {event} to my calendar for {date}", "move my {event} to {day_name}",
                        "move the {event} to {time}", "cancel my {event} {day}", "book a {event} for {day} at {time}",
                        "put the {event} on {weekday} at {time}", "block {day} for the {event}",
                        "invite {name} to the {event}", "clear my calendar {day}",
                        "show me my calendar for {weekday}", "set up a {event} with {name} and {name}",
                        "reschedule the {event} to {date}"),
    "calendar_question": ("what is on my calendar {day}?", "when is my next {event}?",
                          "do I have any meetings {day}?", "what day is it today?", "what is the date today?",
                          "what is the date {day}?", "what day of the week is {date}?",
                          "what day is the {ordinal} of {month}?", "how many days until {holiday}?",
                          "when is {holiday} this year?", "is {name} free {day}?", "am I free {day} at {time}?",
                          "what time is the {event} {day}?", "where is my {event} {day}?",
                          "how many weeks until {date}?", "is {date} a {weekday}?",
                          "what is my first meeting {day}?", "when does the {event} end?",
                          "is {holiday} on a {weekday} this year?", "what week of the year is it?"),
    "event": _words("meeting\nteam meeting\ndentist appointment\ndoctor appointment\nhaircut\nlunch\ndinner\n"
                    "piano lesson\nyoga class\nfootball practice\njob interview\nvideo call\nbirthday party\n"
                    "school concert\nparent meeting\nflight\nconference call\nbook club\nswimming lesson\n"
                    "guitar lesson\nstaff meeting\nbudget review\ncoffee break\nwedding\nsoccer game\n"
                    "dance class\nparty\nmovie night\nbaby shower"),
    "holiday": ("Christmas", "New Year", "Easter", "Halloween", "Thanksgiving", "Valentine's Day", "my birthday",
                "the summer holidays", "the weekend", "Mother's Day", "Father's Day", "Christmas Eve",
                "the school holidays", "{name}'s birthday", "our anniversary"),

    # --- calls and messages -------------------------------------------------------------------------------
    "contact": ("{command_start}{contact_action}{command_end}", "{command_start}{contact_action}{command_end}",
                "{request_start} {contact_action}{request_end}?", "{question_start}{contact_question}"),
    "contact_action": ("call {contact_person}", "call {contact_person}", "call {contact_person} on speaker",
                       "call {contact_person} back", "video call {contact_person}", "text {contact_person} that "
                       "{message}", "send a message to {contact_person} saying {message}",
                       "tell {contact_person} that {message}", "send {contact_person} an email about the "
                       "{event}", "read my new messages", "read the last message from {contact_person}",
                       "answer the call", "hang up", "reply {message}", "message {contact_person} that {message}",
                       "remind {contact_person} about the {event}", "share my location with {contact_person}",
                       "dial {digit} {digit} {digit} {digit} {digit} {digit}", "block this number",
                       "add {name} to my contacts"),
    "contact_question": ("did {contact_person} call me {past_day}?", "do I have any missed calls?",
                         "when did {contact_person} last call?", "do I have any new messages?",
                         "what did {contact_person} say?", "is {name} online?",
                         "what is {contact_person}'s phone number?", "has {name} answered my email?",
                         "who called me {past_day}?"),
    "contact_person": ("my {relative}", "my {relative}", "{name}", "{name}", "{name}", "the {professional}"),
    "relative": _words("mother\nmom\nfather\ndad\nsister\nbrother\ngrandmother\ngrandma\ngrandfather\ngrandpa\n"
                       "aunt\nuncle\ncousin\nwife\nhusband\nson\ndaughter\nboss\nneighbor\ndoctor\ndentist\n"
                       "babysitter\nlandlord\nbest friend\nteacher\ncoach\npartner\nroommate\nniece\nnephew"),
    "name": _words("Anna\nDavid\nMaria\nJohn\nSarah\nMichael\nEmma\nJames\nLaura\nPeter\nLucy\nTom\nKate\nDaniel\n"
                   "Olivia\nSam\nLinda\nPaul\nRachel\nChris\nAlex\nBen\nChloe\nDiana\nEric\nFiona\nGeorge\nHannah\n"
                   "Jack\nJulia\nKevin\nLily\nMark\nNina\nOscar\nRobert\nSophie\nVictor\nZoe\nMartin\nHelen\nSimon\n"
                   "Grace\nLeo\nEmily\nNoah\nMia\nLucas"),
    "message": ("I am running late", "I am on my way", "I will be home in {duration}", "I will be there at {time}",
                "I am stuck in traffic", "dinner is ready", "I love you", "see you {day}", "see you at {time}",
                "happy birthday", "call me back when you can", "the {event} is canceled", "I forgot my keys",
                "please buy {grocery} on the way home", "I am at the {place}", "the {event} is at {time}",
                "thank you for everything", "I will call you later", "I am leaving the {place} now",
                "can we meet {day}", "I miss you", "good luck with the {event}", "the door is open",
                "I am almost there", "let us have {food} for dinner"),

    # --- numbers and arithmetic ---------------------------------------------------------------------------
    "math": ("{question_start}{math_question}", "{question_start}{math_question}",
             "{command_start}{math_action}{command_end}"),
    "math_question": ("what is {number} plus {number}?", "what is {number} minus {number}?",
                      "what is {number} times {number}?", "what is {number} divided by {number}?",
                      "how much is {number} {operator} {number}?", "what is {percent} percent of {number}?",
                      "what is the square root of {number}?", "what is {number_1_99} squared?",
                      "how many {unit_question}?", "how much is {number} {currency} in {currency}?",
                      "is {number} a prime number?", "what is half of {number}?",
                      "how many {unit} is {number} {unit}?", "what is a {tip} percent tip on {number} dollars?"),
    "math_action": ("convert {number} {unit} to {unit}", "convert {number} {currency} to {currency}",
                    "count to {number_1_99}", "count down from {number_1_99}", "add {number} and {number}",
                    "multiply {number} by {number}", "divide {number} by {number}",
                    "roll a dice", "flip a coin", "pick a number between one and {number}",
                    "give me a random number"),
    "operator": ("plus", "minus", "times", "divided by"),
    "tip": ("ten", "fifteen", "eighteen", "twenty"),
    "unit": ("kilometers", "miles", "kilograms", "pounds", "degrees Celsius", "degrees Fahrenheit", "liters",
             "gallons", "cups", "milliliters", "inches", "centimeters", "feet", "meters", "ounces", "grams",
             "minutes", "hours", "seconds", "days", "weeks", "tablespoons", "teaspoons"),
    "currency": ("euros", "dollars", "pounds", "yen", "francs", "pesos"),
    "unit_question": ("seconds are in a day", "days are in a year", "weeks are in a year", "cups are in a liter",
                      "feet are in a mile", "minutes are in a day", "ounces are in a pound",
                      "grams are in a kilogram", "meters are in a kilometer", "hours are in a week",
                      "days are in {month}", "centimeters are in an inch", "teaspoons are in a tablespoon"),

    # --- everyday sentences -------------------------------------------------------------------------------
    "everyday": ("{everyday_statement}", "{question_start}{everyday_question}",
                 "{command_start}{everyday_action}{command_end}", "{request_start} {everyday_action}"
                 "{request_end}?"),
    "everyday_statement": ("good morning", "good night", "good evening", "good afternoon", "thank you",
                           "thank you very much", "thanks a lot", "I am going to bed", "I am leaving now",
                           "I am home", "I am back", "I will be home at {time}", "let us meet at the {place} at "
                           "{time}", "meet me at the {place} {day}", "the {event} starts at {time}",
                           "my train leaves at {time}", "my flight to {city} leaves at {time} {day}",
                           "I am running {count} minutes late", "never mind", "that is all for now",
                           "I am hungry", "I am tired", "I feel {feeling} {day}", "I am cold", "I am hot",
                           "I will be at the {place} {day}", "we are having {food} for dinner",
                           "the kids are asleep", "I am working from home {day}", "it is my birthday {day}",
                           "I parked the car near the {place}", "I lost my {lost_item}",
                           "{name} is coming over {day}", "we are going to {destination} {day}",
                           "the {appliance} is broken", "the {place} closes at {time}"),
    "everyday_question": ("what time is it?", "what time is it in {destination}?", "how are you today?",
                          "how long does it take to get to the {place}?", "how far is {destination} from here?",
                          "where is the nearest {place}?", "is the {place} open {day}?",
                          "what time does the {place} close {day}?", "what time does the {place} open?",
                          "how do you say {phrase} in {language}?", "what is the news today?",
                          "what is the traffic like on the way to the {place}?", "how much battery do I have left?",
                          "how many steps did I walk {past_day}?", "where did I park the car?",
                          "where did I leave my {lost_item}?", "what should I cook for dinner?",
                          "how do you spell {spell_word}?", "what does {spell_word} mean?",
                          "what is the capital of {country}?", "what language do they speak in {country}?",
                          "how old is {name}?",
                          "when does the next bus to the {place} leave?", "how late is the {place} open {day}?",
                          "who won the game {past_day}?", "what is a good {cuisine} recipe?",
                          "are there any {cuisine} restaurants near the {place}?"),
    "everyday_action": ("tell me a joke", "tell me a story", "tell me something interesting",
                        "find a {cuisine} restaurant nearby", "order a {food} for dinner",
                        "book a table for {small_count} at {time}", "translate {phrase} into {language}",
                        "turn on do not disturb", "turn off do not disturb", "call a taxi to the {place}",
                        "take a picture", "take a note", "start a workout", "start a {count} minute workout",
                        "repeat that", "speak slower", "speak a little louder", "read the news",
                        "give me directions to the {place}", "navigate to the {place}", "navigate home",
                        "find my phone", "find my {lost_item}", "show me pictures from {destination}",
                        "spell {spell_word}", "tell me about {destination}", "open the calendar", "go to sleep",
                        "stop", "cancel that", "set my status to busy", "help me relax",
                        "recommend a {cuisine} restaurant in {city}", "play a game with me"),
    "feeling": _words("great\ngood\nsick\ntired\nhappy\nbusy\nbetter\nbored"),
    "lost_item": _words("keys\nwallet\nglasses\nphone\numbrella\nheadphones\nbag\nwatch\npassport\ncharger"),
    "place": _words("station\nairport\npharmacy\nsupermarket\nbank\npost office\nlibrary\nhospital\ngas station\n"
                    "park\ngym\nbakery\ncinema\nmuseum\nschool\noffice\nbeach\nhotel\nrestaurant\ncafe\nbus stop\n"
                    "shopping mall\ncity center\ntrain station\nzoo\nswimming pool\nmarket\nbookstore\nstadium\n"
                    "playground\nhardware store\nfarmers market\nparking lot\ntheater\nclinic\nkindergarten\n"
                    "university\ncar wash\nflower shop\nbutcher\nice rink\ncoffee shop"),
    "cuisine": _words("Italian\nChinese\nMexican\nIndian\nThai\nJapanese\nGreek\nFrench\nvegetarian\nseafood\n"
                      "Korean\nSpanish\nTurkish\nVietnamese\nLebanese\nvegan"),
    "language": _words("Spanish\nFrench\nGerman\nItalian\nChinese\nJapanese\nPortuguese\nDutch\nRussian\n"
                       "Korean\nArabic\nGreek\nSwedish\nPolish\nTurkish"),
    "country": _words("France\nGermany\nItaly\nSpain\nJapan\nChina\nCanada\nBrazil\nEgypt\nKenya\nAustralia\n"
                      "Norway\nSweden\nPoland\nPortugal\nMexico\nArgentina\nIndia\nThailand\nIreland\nScotland\n"
                      "Peru\nChile\nGreece\nAustria\nHungary\nIceland\nFinland\nDenmark\nMorocco"),
    "destination": ("{city}", "{country}"),
    "phrase": ("good morning", "thank you", "where is the station", "how much does it cost",
               "I would like a coffee", "nice to meet you", "see you tomorrow", "happy birthday", "good night",
               "where is the bathroom", "the bill please", "I am lost", "excuse me", "how are you"),
    "spell_word": _words("necessary\nrestaurant\nbeautiful\nWednesday\nFebruary\ncalendar\nneighbor\n"
                         "schedule\nbusiness\ndefinitely\ntomorrow\nreceipt\nguarantee\nvacuum\nrhythm\n"
                         "separate\nknowledge\nweird\nqueue\nbicycle"),
}

check(GRAMMAR, START)
COMPILED_GRAMMAR = compile_grammar(GRAMMAR)


def sentence(rng: random.Random) -> str:
    """One utterance of the domain, finished: capitalized, punctuated, numbers in words."""
    return sentence_with_probability(rng)[0]


def sentence_with_probability(rng: random.Random) -> tuple[str, float]:
    """A sentence and the probability of drawing it this way (short fixed phrases are likely, most are not)."""
    text, probability = expand_with_probability(COMPILED_GRAMMAR, START, rng)
    return finish(text), probability


def word_list() -> list[str]:
    return sorted(vocabulary(GRAMMAR))


def markdown() -> str:
    """DOMAIN.md: the sentence patterns (every rule) and the word list."""
    lines = [
        "# The demo model's domain",
        "",
        "Generated by `python -m training.domain` from `training/domain.py`; do not edit by hand.",
        "",
        f"A sentence is the rule `{START}` expanded: each `{{rule}}` is replaced by one of that rule's "
        "alternatives, chosen uniformly at random (an empty alternative makes a part optional). The result is "
        "capitalized and ends with a full stop unless it is a question. Numbers, times and dates are always "
        "written in words (\"seven thirty\", \"the twenty first of June\", \"forty five percent\").",
        "",
        f"## Words ({len(word_list())})",
        "",
        ", ".join(word_list()),
        "",
        "## Rules",
        "",
    ]
    for rule, alternatives in GRAMMAR.items():
        shown = " | ".join(f"`{a}`" if a else "(nothing)" for a in alternatives)
        lines.append(f"- **{rule}**: {shown}")
    lines += ["", "## Speech", "", *speech_lines(), "", "## Examples", ""]
    rng = random.Random(0)
    lines += [f"- {sentence(rng)}" for _ in range(40)]
    return "\n".join(lines) + "\n"


def speech_lines() -> list[str]:
    from training import corpus, noise, speech

    return [
        f"Rendered by `espeak-ng -v en-us+VARIANT -s SPEED -p PITCH`: training variants "
        f"{', '.join(speech.TRAIN_VARIANTS)}; never trained on: {', '.join(speech.UNSEEN_VARIANTS)}. "
        f"Speed {speech.SPEED_RANGE[0]}-{speech.SPEED_RANGE[1]} words per minute, pitch "
        f"{speech.PITCH_RANGE[0]}-{speech.PITCH_RANGE[1]}, uniformly. Resampled to 16 kHz; "
        f"{speech.SILENCE_RANGE[0]}-{speech.SILENCE_RANGE[1]} s of silence before and after, "
        f"white to pink noise {speech.SNR_DB_RANGE[0]:.0f}-{speech.SNR_DB_RANGE[1]:.0f} dB below the speech, "
        f"gain {speech.GAIN_DB_RANGE[0]:+.0f} to {speech.GAIN_DB_RANGE[1]:+.0f} dB.",
        "",
        "Corpus sentences are drawn a few at a time and the one whose rarest word is rarest so far is kept "
        "(`training/corpus.py`), which evens out how often each word is heard.",
        "",
        f"The second training phase (corpus `v2`) adds clips of {corpus.MULTI_SENTENCES[0]}-"
        f"{corpus.MULTI_SENTENCES[1]} sentences read by one voice with {speech.PAUSE_RANGE[0]}-"
        f"{speech.PAUSE_RANGE[1]} s pauses between them (at most {speech.MAX_CLIP_SECONDS:.0f} s), and clips "
        f"without speech transcribed as nothing: {', '.join(noise.KINDS)} "
        f"({noise.TRAIN_NOISE.level_dbfs[0]:.0f} to {noise.TRAIN_NOISE.level_dbfs[1]:.0f} dBFS, "
        f"{noise.TRAIN_NOISE.seconds[0]}-{noise.TRAIN_NOISE.seconds[1]:.0f} s). Its held-out sentences are "
        f"rare derivations of the grammar (probability at most "
        f"{corpus.SPECS[corpus.HELDOUT_SPEC].heldout_max_probability:g}) that neither phase trained on.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="print or write the domain description (DOMAIN.md)")
    parser.add_argument("--write", type=Path, default=None, help="write DOMAIN.md here instead of printing it")
    parser.add_argument("--examples", type=int, default=0, help="print this many random sentences instead")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.examples:
        rng = random.Random(args.seed)
        print("\n".join(sentence(rng) for _ in range(args.examples)))
    elif args.write:
        args.write.write_text(markdown())
    else:
        print(markdown(), end="")


if __name__ == "__main__":
    main()
